"""apim-mi: Azure API Management's authentication-managed-identity policy as a mitmproxy addon."""

__version__ = "0.1.0"
