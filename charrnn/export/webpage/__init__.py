"""The web export's static files (index.html, charrnn.js), copied as they are by charrnn.export.web."""
