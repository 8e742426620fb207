// MathJax 3 settings. MathJax itself is served from this site (assets/vendor/mathjax/tex-svg.js),
// never from a CDN, so the pages render formulas offline.
// - Markdown pages: pymdownx.arithmatex wraps formulas in class "arithmatex" with \( \) and \[ \].
// - Notebook pages: markdown cells use $ $ and $$ $$, as in JupyterLab; outputs are not typeset.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    // Page furniture and notebook outputs (printed tables may hold prices in $) are left alone.
    ignoreHtmlClass: "tex2jax_ignore|mathjax_ignore|md-header|md-sidebar|md-footer|md-search|jp-OutputArea",
    processHtmlClass: "tex2jax_process|mathjax_process|arithmatex"
  },
  svg: {fontCache: "global"}
};

// MathJax typesets the page when it has loaded; typeset again whenever the theme swaps content.
document$.subscribe(() => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise = MathJax.startup.promise.then(() => MathJax.typesetPromise());
  }
});
