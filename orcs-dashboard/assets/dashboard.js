// orcs dashboard: the overview's charts, confirmations and "select all". No inline script is
// allowed by the Content-Security-Policy, so everything the pages do in the browser is here.
// htmx refreshes the overview's #live section every two seconds; each refresh carries a sample
// (data-at, data-processed, data-failed, data-latency) that the charts plot, after the
// per-minute history the page came with (#throughput-chart's data-history), if the driver keeps one.
(function () {
  "use strict";

  var MAX_POINTS = 300; // ten minutes at one sample every two seconds
  var previous = null;
  var data = { x: [], processed: [], failed: [], latency: [] };
  var charts = {};

  function chart(id, series, columns) {
    var el = document.getElementById(id);
    if (!el || typeof uPlot === "undefined") return null;
    if (!charts[id]) {
      el.textContent = "";
      var opts = {
        width: Math.max(el.clientWidth, 240),
        height: 180,
        series: [{}].concat(series),
        scales: { x: { time: true } },
        axes: [{}, { size: 60 }],
        legend: { live: false },
      };
      charts[id] = new uPlot(opts, columns, el);
    } else {
      charts[id].setData(columns);
    }
    return charts[id];
  }

  function draw() {
    chart("throughput-chart", [
      { label: "processed/s", stroke: "#1f7a4d", width: 2 },
      { label: "failed/s", stroke: "#b42318", width: 2 },
    ], [data.x, data.processed, data.failed]);
    if (data.latency.some(function (v) { return v !== null; })) {
      chart("latency-chart", [{ label: "latency ms", stroke: "#3559c7", width: 2 }], [data.x, data.latency]);
    }
  }

  function push(x, processed, failed, latency) {
    if (data.x.length && x <= data.x[data.x.length - 1]) return;
    data.x.push(x);
    data.processed.push(processed);
    data.failed.push(failed);
    data.latency.push(latency);
    if (data.x.length > MAX_POINTS) {
      ["x", "processed", "failed", "latency"].forEach(function (k) { data[k].shift(); });
    }
  }

  function history() {
    var el = document.getElementById("throughput-chart");
    if (!el || !el.dataset.history) return;
    var points = [];
    try { points = JSON.parse(el.dataset.history); } catch (e) { return; }
    points.forEach(function (p) { push(p[0], p[1], p[2], null); });
    if (data.x.length) draw();
  }

  function sample() {
    var live = document.getElementById("live");
    if (!live) return;
    var at = Number(live.dataset.at) / 1000;
    var now = {
      at: at,
      processed: Number(live.dataset.processed),
      failed: Number(live.dataset.failed),
      latency: live.dataset.latency === "" ? null : Number(live.dataset.latency),
    };
    if (previous && at > previous.at) {
      var seconds = at - previous.at;
      // A forgotten queue takes its counters with it: never plot a negative rate.
      push(at, Math.max(0, (now.processed - previous.processed) / seconds),
        Math.max(0, (now.failed - previous.failed) / seconds), now.latency);
      draw();
    }
    if (!previous || at > previous.at) previous = now;
  }

  document.addEventListener("DOMContentLoaded", function () { history(); sample(); });
  document.addEventListener("htmx:afterSettle", sample);

  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (id) {
      var el = document.getElementById(id);
      if (el) charts[id].setSize({ width: Math.max(el.clientWidth, 240), height: 180 });
    });
  });

  // A form or button with data-confirm asks first.
  document.addEventListener("submit", function (event) {
    var button = event.submitter;
    var message = (button && button.dataset.confirm) || event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });

  // "Select all" ticks every row checkbox that belongs to the same bulk form.
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box.classList || !box.classList.contains("select-all")) return;
    var rows = document.querySelectorAll('input[type="checkbox"][form="' + box.dataset.form + '"]');
    rows.forEach(function (row) { row.checked = box.checked; });
  });
})();
