// Drawing helpers for the live loss chart (canvas 2D only; exports functions, registers nothing).
// Loss terms differ by orders of magnitude, so each has its own small panel and scale.

// Same colours as nodes/visual.py, so the live chart matches the loss_curve image.
const COLOURS = { esd: "#e6550d", attn: "#3182bd", fm: "#31a354", fm_irrelevant: "#a1d99b", retain: "#fdae6b", rsc: "#756bb1", total: "#dcdcdc" };
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

export const EMA_ALPHA = 0.1; // smoothing of the bold line (the raw values are the faint one)

// Exponential moving average of one term's finite values: [{step, raw, ema}].
export function smoothed(points, term, alpha = EMA_ALPHA) {
  const out = [];
  let ema = null;
  for (const p of points) {
    const v = p.values[term];
    if (!Number.isFinite(v)) continue;
    ema = ema === null ? v : ema + alpha * (v - ema);
    out.push({ step: p.step, raw: v, ema });
  }
  return out;
}

// One panel: the term's raw values (faint) and their EMA (bold), scaled to the panel's own min..max,
// with the range written at the left edge and the term's last smoothed value at the right.
function drawPanel(ctx, series, term, panel, lastStep) {
  let lo = Infinity, hi = -Infinity;
  for (const p of series) { lo = Math.min(lo, p.raw); hi = Math.max(hi, p.raw); }
  const span = hi - lo || 1;
  const x = (step) => panel.x + ((step - 1) / Math.max(1, lastStep - 1)) * panel.w;
  const y = (v) => panel.y + panel.h - ((v - lo) / span) * panel.h;
  ctx.strokeStyle = "#333";
  ctx.strokeRect(panel.x, panel.y, panel.w, panel.h);
  const colour = termColour(term);
  ctx.strokeStyle = ctx.fillStyle = colour;
  for (const [key, alpha, width] of [["raw", 0.35, 1], ["ema", 1, 2]]) {
    ctx.globalAlpha = alpha;
    ctx.lineWidth = width;
    ctx.beginPath();
    series.forEach((p, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, x(p.step), y(p[key])));
    ctx.stroke();
  }
  ctx.globalAlpha = 1;
  ctx.font = "9px sans-serif";
  ctx.textAlign = "left";
  ctx.fillStyle = "#888";
  ctx.fillText(formatValue(hi), panel.x + 2, panel.y + 1);
  ctx.textBaseline = "bottom";
  ctx.fillText(formatValue(lo), panel.x + 2, panel.y + panel.h - 1);
  ctx.textBaseline = "top";
  ctx.textAlign = "right";
  ctx.fillStyle = colour;
  ctx.font = "10px sans-serif";
  ctx.fillText(`${term} ${formatValue(series.at(-1).ema)}`, panel.x + panel.w - 2, panel.y + 1);
  ctx.textAlign = "left";
}

// Draws the chart into rect {x, y, w, h}; data: {points: [{step, phase, values}], total, label, note}.
// One small panel per loss term (they differ by orders of magnitude), a step axis under them.
// Returns the area the panels cover {x, y, w, h}, or null while there are no points.
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
  const terms = termsOf(points).map((t) => [t, smoothed(points, t)]).filter(([, s]) => s.length);
  const lastStep = Math.max(total, last.step);
  const area = { x: rect.x + 8, y: rect.y + 22, w: rect.w - 16, h: rect.h - 22 - 16 };
  const gap = 3, ph = (area.h - gap * (terms.length - 1)) / Math.max(1, terms.length);
  terms.forEach(([term, series], i) => {
    drawPanel(ctx, series, term, { x: area.x, y: area.y + i * (ph + gap), w: area.w, h: ph }, lastStep);
  });
  // Step axis: first, middle and last step of the run.
  ctx.fillStyle = "#888";
  ctx.font = "9px sans-serif";
  const axisY = area.y + area.h + 3;
  for (const [step, align] of [[1, "left"], [Math.round(lastStep / 2), "center"], [lastStep, "right"]]) {
    ctx.textAlign = align;
    ctx.fillText(String(step), area.x + ((step - 1) / Math.max(1, lastStep - 1)) * area.w, axisY);
  }
  ctx.restore();
  return area;
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
