// Swagger UI at /docs, started from this file rather than an inline script: the page's Content-Security-Policy
// allows this service's own scripts only (korllama/serve/guard.py). The settings are FastAPI's defaults.
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
