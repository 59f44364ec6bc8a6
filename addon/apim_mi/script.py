"""The packaged mitmproxy script: ``mitmdump -s "$(apim-mi addon-path)"``, and what ``apim-mi proxy`` / ``apim-mi web``
load. A checkout's ``addon/mi.py`` is the same script; an installed wheel has only this one."""

from apim_mi.addon import ApimMi
from apim_mi.contentview import register_contentview

register_contentview()

addons = [ApimMi()]
