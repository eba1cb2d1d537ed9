// Typesets the math pymdownx.arithmatex (generic mode) leaves in .arithmatex elements as
// \( … \) and \[ … \], on the first load and after every page change (mkdocs-material's
// document$). Only those elements are touched, so a "$" in prose or code stays as written.
function renderMath() {
  for (const element of document.querySelectorAll(".arithmatex")) {
    renderMathInElement(element, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: false,
    });
  }
}
if (typeof document$ !== "undefined") {
  document$.subscribe(renderMath);
} else {
  document.addEventListener("DOMContentLoaded", renderMath);
}
