// The usage chart: hand-drawn SVG stacked bars (no library, nothing inline, CSP-clean), a tooltip per
// bar reachable with the arrow keys, and the same numbers as a table. barLayout is the pure part.

export const CLASSES = ["2xx", "3xx", "4xx", "5xx", "refused"];
export const CLASS_LABEL = { "2xx": "2xx", "3xx": "3xx", "4xx": "4xx", "5xx": "5xx", refused: "Refused by the gateway" };
const SVG = "http://www.w3.org/2000/svg";
const HEIGHT = 100; // viewBox units; the chart's CSS height scales it
const SLOT = 10; // viewBox width per bar
const GAP = 2;

const hourFormat = new Intl.DateTimeFormat("en-US", { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZone: "UTC" });
const dayFormat = new Intl.DateTimeFormat("en-US", { month: "short", day: "numeric", year: "numeric", timeZone: "UTC" });

export function total(bucket) {
  return CLASSES.reduce((sum, c) => sum + (bucket[c] || 0), 0);
}

export function periodLabel(start, granularity) {
  const date = new Date(start);
  return granularity === "hour" ? `${hourFormat.format(date)} UTC` : `${dayFormat.format(date)} (UTC)`;
}

// Pure: for each bucket its stacked segments [{cls, value, y, height}] in viewBox units, the
// tallest bar HEIGHT high.
export function barLayout(buckets) {
  const max = Math.max(1, ...buckets.map(total));
  return buckets.map((bucket, i) => {
    let y = HEIGHT;
    const segments = [];
    for (const cls of CLASSES) {
      const value = bucket[cls] || 0;
      if (!value) continue;
      const height = (value / max) * HEIGHT;
      y -= height;
      segments.push({ cls, value, y, height });
    }
    return { x: i * SLOT + GAP / 2, width: SLOT - GAP, total: total(bucket), segments };
  });
}

function describe(bucket, granularity) {
  const parts = CLASSES.filter((c) => bucket[c]).map((c) => `${bucket[c]} ${CLASS_LABEL[c]}`);
  const n = total(bucket);
  return `${periodLabel(bucket.start, granularity)}: ${n} request${n === 1 ? "" : "s"}${parts.length ? " (" + parts.join(", ") + ")" : ""}`;
}

function el(tag, attrs = {}, ns = null) {
  const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

// Draws usage ({granularity, buckets, totals}) into ``box`` (the chart) and ``table``.
export function drawUsage(box, table, usage) {
  const { buckets, granularity } = usage;
  const layout = barLayout(buckets);
  const svg = el("svg", { viewBox: `0 0 ${buckets.length * SLOT} ${HEIGHT}`, preserveAspectRatio: "none",
    role: "group", "aria-label": `Requests per ${granularity} by outcome; use the arrow keys to read each bar` }, SVG);
  const tip = el("div", { class: "chart-tip", role: "tooltip", id: "chart-tip" });
  tip.hidden = true;
  const bars = layout.map((bar, i) => {
    const bucket = buckets[i];
    const g = el("g", { class: "bar", role: "img", tabindex: i === buckets.length - 1 ? 0 : -1,
      "aria-label": describe(bucket, granularity), "data-start": bucket.start, "data-total": bar.total }, SVG);
    for (const cls of CLASSES) g.setAttribute(`data-${cls}`, String(bucket[cls] || 0));
    // A full-height hit area, so empty and short bars have a tooltip too.
    g.append(el("rect", { class: "hit", x: i * SLOT, y: 0, width: SLOT, height: HEIGHT }, SVG));
    for (const seg of bar.segments) {
      g.append(el("rect", { class: `seg c-${seg.cls}`, "data-class": seg.cls, x: bar.x, y: seg.y, width: bar.width, height: seg.height }, SVG));
    }
    const show = () => {
      tip.textContent = describe(bucket, granularity);
      tip.hidden = false;
      tip.style.left = "0px"; // measured at the left edge: a tip left further right is squeezed narrower
      const b = g.getBoundingClientRect();
      const outer = box.getBoundingClientRect();
      const left = Math.min(Math.max(0, b.left - outer.left + b.width / 2 - tip.offsetWidth / 2), outer.width - tip.offsetWidth);
      tip.style.left = `${Math.max(0, left)}px`; // CSSOM, not a style attribute: allowed by the CSP
      g.setAttribute("aria-describedby", "chart-tip");
    };
    const hide = () => {
      tip.hidden = true;
      g.removeAttribute("aria-describedby");
    };
    g.addEventListener("mouseenter", show);
    g.addEventListener("mouseleave", hide);
    g.addEventListener("focus", show);
    g.addEventListener("blur", hide);
    svg.append(g);
    return g;
  });
  // Roving focus: one tab stop for the chart, the arrow keys move between bars.
  svg.addEventListener("keydown", (event) => {
    const at = bars.indexOf(document.activeElement);
    if (at < 0) return;
    const next = { ArrowLeft: at - 1, ArrowRight: at + 1, Home: 0, End: bars.length - 1 }[event.key];
    if (next === undefined || next < 0 || next >= bars.length) return;
    event.preventDefault();
    bars[at].setAttribute("tabindex", "-1");
    bars[next].setAttribute("tabindex", "0");
    bars[next].focus();
  });

  const legend = el("ul", { class: "legend" });
  for (const cls of CLASSES) {
    const li = el("li");
    li.append(el("span", { class: `swatch c-${cls}`, "aria-hidden": "true" }), `${CLASS_LABEL[cls]}: ${usage.totals[cls] || 0}`);
    legend.append(li);
  }
  const axis = el("div", { class: "axis", "aria-hidden": "true" });
  if (buckets.length) {
    axis.append(el("span"), el("span"));
    axis.firstChild.textContent = periodLabel(buckets[0].start, granularity);
    axis.lastChild.textContent = periodLabel(buckets[buckets.length - 1].start, granularity);
  }
  box.replaceChildren(svg, tip, axis, legend);
  drawTable(table, usage);
}

function drawTable(table, usage) {
  const caption = el("caption");
  caption.textContent = `Requests per ${usage.granularity} by outcome (UTC)`;
  const head = el("tr");
  for (const name of ["Period", ...CLASSES.map((c) => CLASS_LABEL[c]), "Total"]) {
    const th = el("th", { scope: "col" });
    th.textContent = name;
    head.append(th);
  }
  const body = el("tbody");
  for (const bucket of usage.buckets) {
    const tr = el("tr", { "data-start": bucket.start });
    const th = el("th", { scope: "row" });
    th.textContent = periodLabel(bucket.start, usage.granularity);
    tr.append(th);
    for (const value of [...CLASSES.map((c) => bucket[c] || 0), total(bucket)]) {
      const td = el("td");
      td.textContent = String(value);
      tr.append(td);
    }
    body.append(tr);
  }
  const foot = el("tfoot");
  const sum = el("tr");
  const th = el("th", { scope: "row" });
  th.textContent = "Total";
  sum.append(th);
  for (const value of [...CLASSES.map((c) => usage.totals[c] || 0), total(usage.totals)]) {
    const td = el("td");
    td.textContent = String(value);
    sum.append(td);
  }
  foot.append(sum);
  const thead = el("thead");
  thead.append(head);
  table.replaceChildren(caption, thead, body, foot);
}
