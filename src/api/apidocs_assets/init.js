// The API reference: Swagger UI (vendor/, see VENDORED.md) over this server's own
// OpenAPI document. Everything comes from this origin: no validator badge (it would
// ask validator.swagger.io), no fonts, no other host.
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  window.ui = window.SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    // Credentials typed into "Authorize" stay in this page: not kept across reloads.
    persistAuthorization: false,
    displayRequestDuration: true,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    tryItOutEnabled: false,
  });
});
