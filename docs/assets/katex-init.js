// Typeset the math that pymdownx.arithmatex (generic mode) leaves in <span class="arithmatex">\(...\)</span>
// and <div class="arithmatex">\[...\]</div>, with the KaTeX served by this site (no CDN).
(function () {
  "use strict";

  function typeset(root) {
    root.querySelectorAll(".arithmatex").forEach(function (el) {
      if (el.dataset.katexDone) return;
      var tex = el.textContent.trim();
      var display = el.tagName === "DIV";
      if (tex.startsWith("\\(") || tex.startsWith("\\[")) tex = tex.slice(2, -2);
      katex.render(tex, el, {
        displayMode: display,
        throwOnError: false, // a bad formula shows in red (.katex-error): the browser test fails on it
        strict: "ignore",
        trust: false,
      });
      el.dataset.katexDone = "1";
    });
  }

  if (typeof document$ !== "undefined") {
    document$.subscribe(function () { typeset(document.body); });
  } else {
    document.addEventListener("DOMContentLoaded", function () { typeset(document.body); });
  }
})();
