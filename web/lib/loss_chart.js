// Drawing helpers for the live loss chart (canvas 2D only; exports functions, registers nothing).
// Loss terms differ by orders of magnitude, so each line is scaled to its own min..max.

// Same colours as nodes/visual.py, so the live chart matches the loss_curve image.
const COLOURS = { esd: "#e6550d", attn: "#3182bd", fm: "#31a354", fm_irrelevant: "#a1d99b", rsc: "#756bb1", total: "#dcdcdc" };
const OTHER_COLOUR = "#bdbdbd";

export function termColour(term) {
  return COLOURS[term] ?? OTHER_COLOUR;
}

// The terms seen in `points`, known ones first in a fixed order.
export function termsOf(points) {
  const seen = new Set();
  for (const p of points) for (const key of Object.keys(p.values)) seen.add(key);
  const known = Object.keys(COLOURS).filter((t) => seen.has(t));
  return known.concat([...seen].filter((t) => !(t in COLOURS)).sort());
}

export function formatValue(v) {
  if (!Number.isFinite(v)) return String(v);
  if (v === 0) return "0";
  return Math.abs(v) >= 1e-3 && Math.abs(v) < 1e4 ? v.toPrecision(3) : v.toExponential(2);
}

function drawLine(ctx, points, term, plot, lastStep) {
  const series = points.filter((p) => Number.isFinite(p.values[term]));
  if (!series.length) return;
  let lo = Infinity, hi = -Infinity;
  for (const p of series) { lo = Math.min(lo, p.values[term]); hi = Math.max(hi, p.values[term]); }
  const span = hi - lo || 1;
  const x = (step) => plot.x + ((step - 1) / Math.max(1, lastStep - 1)) * plot.w;
  const y = (v) => plot.y + plot.h - ((v - lo) / span) * plot.h;
  ctx.strokeStyle = ctx.fillStyle = termColour(term);
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  series.forEach((p, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, x(p.step), y(p.values[term])));
  ctx.stroke();
  const last = series[series.length - 1];
  ctx.fillRect(x(last.step) - 2, y(last.values[term]) - 2, 4, 4);
}

// Draws the chart into rect {x, y, w, h}; data: {points: [{step, phase, values}], total}.
// Returns the plot area {x, y, w, h} (where the lines are), or null while there are no points.
export function drawLossChart(ctx, rect, data) {
  const { points, total } = data;
  ctx.save();
  ctx.fillStyle = "#161616";
  ctx.strokeStyle = "#555";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.roundRect(rect.x, rect.y, rect.w, rect.h, 6);
  ctx.fill();
  ctx.stroke();
  ctx.font = "11px sans-serif";
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  ctx.fillStyle = "#aaa";
  if (!points.length) {
    const text = data.label ? `Preparing data: ${data.label}` : data.note ?? "Loss chart: waiting for training to start";
    ctx.fillText(text, rect.x + 8, rect.y + 8, rect.w - 16);
    ctx.restore();
    return null;
  }
  const last = points[points.length - 1];
  const header = `step ${last.step} / ${total}  (${last.phase})` + (data.note ? `  ${data.note}` : "");
  ctx.fillText(header, rect.x + 8, rect.y + 6, rect.w - 16);
  const terms = termsOf(points);
  const legendRows = Math.ceil(terms.length / 3);
  const plot = { x: rect.x + 8, y: rect.y + 22, w: rect.w - 16, h: rect.h - 30 - legendRows * 14 };
  const lastStep = Math.max(total, last.step);
  for (const term of terms) drawLine(ctx, points, term, plot, lastStep);
  // Legend: the last value of each term, in its colour, three per row.
  const colW = (rect.w - 16) / 3;
  terms.forEach((term, i) => {
    const lastValue = [...points].reverse().find((p) => term in p.values)?.values[term];
    ctx.fillStyle = termColour(term);
    const lx = rect.x + 8 + (i % 3) * colW, ly = plot.y + plot.h + 4 + Math.floor(i / 3) * 14;
    ctx.fillText(`${term} ${formatValue(lastValue)}`, lx, ly, colW - 4);
  });
  ctx.restore();
  return plot;
}

// One line of caption text, e.g. naming what the attention preview below shows.
export function drawCaption(ctx, text, x, y, maxWidth) {
  ctx.save();
  ctx.font = "12px sans-serif";
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  ctx.fillStyle = "#ddd";
  ctx.fillText(text, x, y, maxWidth);
  ctx.restore();
}
