"""The APIM policy engine: documents (model), loading (loader), expressions, context and execution (engine)."""
