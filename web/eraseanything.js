// EraseAnything: a live loss chart on Train Erasure LoRA, fed by the node's `eraseanything.loss` events,
// and a caption naming the concept on the live attention preview that ComfyUI shows under the node.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { drawCaption, drawLossChart } from "./lib/loss_chart.js";

const TRAIN_NODE = "EraseAnything_TrainErasureLoRA";
const CHART_WIDGET = "loss_chart";
const PREVIEW_WIDGET = "$$canvas-image-preview"; // the frontend's image preview widget under a node
const CHART_HEIGHT = 170;

// A canvas widget (not serialized) whose `data` holds the current run: {points, total, stale, previewStep}.
function lossChartWidget() {
  return {
    name: CHART_WIDGET,
    type: "eraseanything.loss_chart",
    value: "",
    serialize: false,
    options: { serialize: false },
    data: { points: [], total: 0, stale: false, previewStep: null },
    computeSize(width) {
      return [width ?? 320, CHART_HEIGHT];
    },
    draw(ctx, node, width, y) {
      ctx.save();
      if (this.data.stale) ctx.globalAlpha *= 0.45; // a new run started; this chart is the previous one
      drawLossChart(ctx, { x: 10, y: y + 2, w: width - 20, h: CHART_HEIGHT - 4 }, this.data);
      ctx.restore();
    },
  };
}

function chartOf(node) {
  return node?.widgets?.find((w) => w.name === CHART_WIDGET);
}

// detail.node / nodeId is the node's id as a string ("3"); ids inside subgraphs ("5:3") are not ours.
function trainNode(id) {
  const node = app.graph?.getNodeById(Number(id));
  return node?.type === TRAIN_NODE ? node : null;
}

function onLoss({ detail }) {
  const node = trainNode(detail.node);
  const chart = chartOf(node);
  if (!chart) return;
  const data = chart.data;
  const lastStep = data.points.at(-1)?.step ?? 0;
  if (data.stale || detail.step === 1 || detail.step <= lastStep) {
    Object.assign(data, { points: [], stale: false, previewStep: null });
  }
  data.total = detail.total;
  data.points.push({ step: detail.step, phase: detail.phase, values: { ...detail.values } });
  node.setDirtyCanvas(true, false);
}

function onPreview({ detail }) {
  const chart = chartOf(trainNode(detail.displayNodeId ?? detail.nodeId));
  if (chart) chart.data.previewStep = chart.data.points.at(-1)?.step ?? null;
}

function onRunStart() {
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

    // Caption the live attention preview with the concept (canvas text: user text never becomes HTML).
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground?.apply(this, arguments);
      const chart = chartOf(this);
      const preview = this.widgets?.find((w) => w.name === PREVIEW_WIDGET);
      if (chart?.data.previewStep != null && preview && this.imgs?.length && !this.flags?.collapsed) {
        const concept = String(this.widgets.find((w) => w.name === "concept")?.value ?? "");
        const text = `attention to "${concept}" · step ${chart.data.previewStep}`;
        drawCaption(ctx, text, 10, preview.y + 4, this.size[0] - 20);
      }
      return result;
    };
  },
});
