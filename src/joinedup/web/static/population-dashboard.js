// Population dashboard: render each figure's Vega-Lite chart from the JSON block beside it (no inline script, no
// eval: Vega's expression interpreter, as the Content-Security-Policy allows scripts from this site only).
(function () {
  "use strict";
  function render() {
    var charts = document.querySelectorAll("[data-vl-spec]");
    for (var i = 0; i < charts.length; i++) {
      var el = charts[i];
      var block = document.getElementById(el.getAttribute("data-vl-spec"));
      if (!block) { continue; }
      var spec = JSON.parse(block.textContent);
      if (!spec.data || !spec.data.values || spec.data.values.length === 0) {
        el.textContent = "Nothing to chart: every value is withheld or nothing was counted (see the table).";
        el.classList.add("chart--empty");
        continue;
      }
      window.vegaEmbed(el, spec, {ast: true, expr: window.vega.expressionInterpreter, actions: false,
                                  renderer: "svg"})
        .then(function (res) { res.view.container().setAttribute("data-rendered", "true"); })
        .catch(function (err) { el.textContent = "The chart could not be drawn (" + err + "); the table has the figures."; });
    }
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", render); } else { render(); }
})();
