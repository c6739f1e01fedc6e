// EraseAnything: a live loss chart on Train Erasure LoRA, fed by the node's `eraseanything.loss` events,
// with a caption naming the concept whose attention the live preview under the node shows.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { drawCaption, drawLossChart } from "./lib/loss_chart.js";

const TRAIN_NODE = "EraseAnything_TrainErasureLoRA";
const CHART_WIDGET = "loss_chart";
const CHART_HEIGHT = 230;
const CAPTION_HEIGHT = 18;

// A canvas widget, not serialized. `data` is the current run: {points: [{step, phase, values}], total,
// stale, previewStep, label (data preparation: "sampling 8 concept images 3/28"), note ("saved ...",
// "cancelled at step N")}; `plotRect` is where the last draw put the lines (node coordinates).
function lossChartWidget() {
  return {
    name: CHART_WIDGET,
    type: "eraseanything.loss_chart",
    value: "",
    serialize: false,
    options: { serialize: false },
    data: { points: [], total: 0, stale: false, previewStep: null, label: null, note: null },
    plotRect: null,
    computeSize(width) {
      return [width ?? 320, CHART_HEIGHT + CAPTION_HEIGHT];
    },
    draw(ctx, node, width, y) {
      ctx.save();
      if (this.data.stale) ctx.globalAlpha *= 0.45; // a new run started; this is the previous run's chart
      this.plotRect = drawLossChart(ctx, { x: 10, y: y + 2, w: width - 20, h: CHART_HEIGHT - 4 }, this.data);
      ctx.restore();
      if (this.data.previewStep != null && node.imgs?.length) {
        // Canvas text: the concept is user text and never becomes HTML.
        const concept = String(node.widgets.find((w) => w.name === "concept")?.value ?? "");
        const text = `Attention to "${concept}" at step ${this.data.previewStep} (preview below)`;
        drawCaption(ctx, text, 12, y + CHART_HEIGHT + 3, width - 24);
      }
    },
  };
}

function chartOf(node) {
  return node?.widgets?.find((w) => w.name === CHART_WIDGET);
}

// Events carry the node id as a string ("3"); ids inside subgraphs ("5:3") are not ours.
function trainNode(id) {
  const node = app.graph?.getNodeById(Number(id));
  return node?.type === TRAIN_NODE ? node : null;
}

// The prompt this tab queued and is running (execution_start goes to the queuing client only). The
// server sends our events to that client only too; the prompt id check also drops a previous run's late events.
let runningPrompt = null;

function ours(detail) {
  return !detail.prompt_id || !runningPrompt || detail.prompt_id === runningPrompt;
}

function onLoss({ detail }) {
  const node = trainNode(detail.node);
  const chart = chartOf(node);
  if (!chart || !ours(detail)) return;
  const data = chart.data;
  const lastStep = data.points.at(-1)?.step ?? 0;
  if (data.stale || detail.step === 1 || detail.step <= lastStep) {
    Object.assign(data, { points: [], stale: false, previewStep: null, note: null });
  }
  data.label = null;
  data.total = detail.total;
  data.points.push({ step: detail.step, phase: detail.phase, values: { ...detail.values } });
  node.setDirtyCanvas(true, false);
}

// Data preparation (sampling the concept's images before step 1): a labelled count in the header.
function onPhase({ detail }) {
  const node = trainNode(detail.node);
  const chart = chartOf(node);
  if (!chart || !ours(detail)) return;
  Object.assign(chart.data, { points: [], stale: false, previewStep: null, note: null,
                              label: `${detail.label} ${detail.done}/${detail.total}` });
  node.setDirtyCanvas(true, false);
}

function onInterrupted({ detail }) {
  if (!ours(detail)) return;
  for (const node of app.graph?._nodes ?? []) {
    const chart = node.type === TRAIN_NODE && chartOf(node);
    if (!chart || chart.data.stale || (!chart.data.points.length && !chart.data.label)) continue;
    const step = chart.data.points.at(-1)?.step;
    chart.data.note = step ? `cancelled at step ${step}` : "cancelled while preparing data";
    chart.data.label = null;
  }
  app.graph?.setDirtyCanvas(true, false);
}

function onPreview({ detail }) {
  const chart = chartOf(trainNode(detail.displayNodeId ?? detail.nodeId));
  if (chart) chart.data.previewStep = chart.data.points.at(-1)?.step ?? null;
}

// A new run: keep the last chart (dimmed) until this node's first loss event replaces it, so a
// cached Train node keeps showing the run that made its LoRA.
function onRunStart({ detail }) {
  runningPrompt = detail?.prompt_id ?? null;
  for (const node of app.graph?._nodes ?? []) {
    const chart = node.type === TRAIN_NODE && chartOf(node);
    if (chart && chart.data.points.length) chart.data.stale = true;
  }
  app.graph?.setDirtyCanvas(true, false);
}

app.registerExtension({
  name: "EraseAnything.LossChart",

  setup() {
    api.addEventListener("eraseanything.loss", onLoss);
    api.addEventListener("eraseanything.phase", onPhase);
    api.addEventListener("execution_interrupted", onInterrupted);
    api.addEventListener("b_preview_with_metadata", onPreview);
    api.addEventListener("execution_start", onRunStart);
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== TRAIN_NODE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.addCustomWidget(lossChartWidget());
      const [w, h] = this.computeSize();
      this.setSize([Math.max(this.size[0], w), Math.max(this.size[1], h)]);
      return result;
    };
    // The file the run wrote (a repeated name becomes name_2, name_3): shown under the chart.
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const chart = chartOf(this);
      if (chart && message?.text?.length) chart.data.note = String(message.text[0]);
      this.setDirtyCanvas(true, false);
    };
  },
});
