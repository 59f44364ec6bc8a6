"""mitmproxy entry point: ``mitmdump -s addon/mi.py`` (or mitmweb). The code lives in the ``apim_mi`` package."""

from apim_mi.addon import ApimMi
from apim_mi.contentview import register_contentview

register_contentview()

addons = [ApimMi()]
