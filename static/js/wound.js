/**
 * The chart of a wound's trajectory page (templates/studies/wound.html), drawn with the vendored
 * Chart.js (static/vendor/chartjs, loaded before this module) from the figures the server put
 * on the table's rows (`data-days`, `data-area`, `data-length`, `data-width`), so the chart and
 * the accessible table can never disagree. No inline script or style: strict CSP.
 * @module wound
 */

/** The quantities drawn, in colours that read on the light and the dark theme alike. */
const SERIES = [
  { key: "area", label: "Area (mm²)", axis: "y", color: "#1f77b4" },
  { key: "length", label: "Length (mm)", axis: "y1", color: "#d95f02" },
  { key: "width", label: "Width (mm)", axis: "y1", color: "#1b9e77" },
];

/** Grid lines visible on both themes. */
const GRID = "rgba(128, 128, 128, 0.35)";

/** The points of one quantity: {x: days since the first visit, y: value}, visits without it left out. */
function points(rows, key) {
  return rows.filter((row) => row.dataset[key] !== undefined)
    .map((row) => ({ x: Number(row.dataset.days), y: Number(row.dataset[key]) }));
}

function draw() {
  const canvas = document.getElementById("chart");
  const rows = [...document.querySelectorAll("#visits tbody tr")];
  if (!canvas || typeof window.Chart !== "function") return;
  const text = getComputedStyle(document.body).color;
  const datasets = SERIES.map((s) => ({
    label: s.label, data: points(rows, s.key), yAxisID: s.axis, borderColor: s.color,
    backgroundColor: s.color, borderWidth: 2, pointRadius: 4, tension: 0,
  })).filter((d) => d.data.length);
  const lengths = datasets.some((d) => d.yAxisID === "y1");
  const chart = new window.Chart(canvas, {
    type: "line",
    data: { datasets },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false, parsing: false,
      color: text,
      scales: {
        x: { type: "linear", title: { display: true, text: "Days since the first visit", color: text },
             ticks: { color: text }, grid: { color: GRID } },
        y: { beginAtZero: true, title: { display: true, text: "mm²", color: text }, ticks: { color: text },
             grid: { color: GRID } },
        y1: { display: lengths, position: "right", beginAtZero: true, grid: { drawOnChartArea: false },
              title: { display: true, text: "mm", color: text }, ticks: { color: text } },
      },
      plugins: { legend: { labels: { color: text } } },
    },
  });
  canvas.dataset.drawn = String(chart.data.datasets.reduce((n, d) => n + d.data.length, 0));
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
else draw();
