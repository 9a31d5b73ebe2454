// imagerelay: start Swagger UI on /openapi.json (a file, so the page's CSP needs no inline script).
window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
  });
};
