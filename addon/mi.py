"""mitmproxy entry point of a checkout: ``mitmdump -s addon/mi.py`` (or mitmweb). The code lives in the ``apim_mi``
package; an installed wheel has the same script as ``apim_mi/script.py`` (``apim-mi addon-path``)."""

from apim_mi.addon import ApimMi
from apim_mi.contentview import register_contentview

register_contentview()

addons = [ApimMi()]
