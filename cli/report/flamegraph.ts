// A flame graph of folded stacks as one self-contained SVG file: d3-hierarchy
// lays the frames out (its partition layout: a frame as wide as its hits),
// this file only writes the rectangles and their names. Outermost frame at
// the bottom, callers sorted by name as flamegraph.pl does; hovering a frame
// shows its hits and share (an SVG <title>), no script and no external file.
import { hierarchy, partition, type HierarchyRectangularNode } from "d3-hierarchy";

interface Frame {
  name: string;
  /** Hits of stacks that end here (leaf); the layout sums the rest. */
  self: number;
  children: Map<string, Frame>;
}

/** How the graph is drawn. */
export interface FlameGraphOptions {
  title: string;
  /** What a count is, e.g. "hits". */
  countName?: string;
  widthPx?: number;
}

const frameHeightPx = 17;
const fontSizePx = 12;
/** Average glyph width of the font, relative to its size (as flamegraph.pl assumes). */
const glyphWidth = 0.59;
const marginPx = 10;
const titleHeightPx = 30;

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;" })[c]!);
}

/** A warm colour from the name, stable across runs (the same function keeps its colour). */
function colourOf(name: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  const v1 = ((h >>> 0) % 1000) / 1000;
  const v2 = ((h >>> 10) % 1000) / 1000;
  return `rgb(${205 + Math.round(50 * v2)},${Math.round(230 * v1)},${Math.round(55 * v2)})`;
}

/** The tree of frames from `frame;frame;frame` → hits. */
function frameTree(folded: ReadonlyMap<string, number>): Frame {
  const root: Frame = { name: "all", self: 0, children: new Map() };
  for (const [stack, hits] of folded) {
    let node = root;
    for (const name of stack.split(";")) {
      let child = node.children.get(name);
      if (!child) {
        child = { name, self: 0, children: new Map() };
        node.children.set(name, child);
      }
      node = child;
    }
    node.self += hits;
  }
  return root;
}

/** The SVG document of a flame graph over `folded` (folded stack → hits). */
export function renderFlameGraphSvg(folded: ReadonlyMap<string, number>, options: FlameGraphOptions): string {
  const widthPx = options.widthPx ?? 1200;
  const countName = options.countName ?? "hits";
  const root = hierarchy(frameTree(folded), (f) => [...f.children.values()])
    .sum((f) => f.self)
    .sort((a, b) => (a.data.name < b.data.name ? -1 : a.data.name > b.data.name ? 1 : 0));
  const total = root.value ?? 0;
  const levels = root.height + 1;
  const graphHeightPx = levels * frameHeightPx;
  const heightPx = titleHeightPx + graphHeightPx + 2 * marginPx;
  const laid: HierarchyRectangularNode<Frame> = partition<Frame>().size([widthPx - 2 * marginPx, graphHeightPx])(root);
  const out: string[] = [];
  out.push(`<?xml version="1.0" standalone="no"?>`);
  out.push(`<svg version="1.1" xmlns="http://www.w3.org/2000/svg" width="${widthPx}" height="${heightPx}" viewBox="0 0 ${widthPx} ${heightPx}" font-family="Verdana, sans-serif" font-size="${fontSizePx}">`);
  out.push(`<rect x="0" y="0" width="${widthPx}" height="${heightPx}" fill="#f8f8f0"/>`);
  out.push(`<text x="${widthPx / 2}" y="${marginPx + 14}" text-anchor="middle" font-size="${fontSizePx + 4}">${escapeXml(options.title)}</text>`);
  if (total === 0) {
    out.push(`<text x="${widthPx / 2}" y="${titleHeightPx + marginPx + 14}" text-anchor="middle">no ${escapeXml(countName)}</text>`);
  } else {
    for (const node of laid.descendants()) {
      const w = node.x1 - node.x0;
      // Frames narrower than a tenth of a pixel would be invisible: left out, their hits stay in their callers' widths.
      if (w < 0.1) continue;
      const x = marginPx + node.x0;
      // Depth grows upwards: the outermost frame ("all") sits at the bottom.
      const y = titleHeightPx + marginPx + graphHeightPx - (node.depth + 1) * frameHeightPx;
      const hits = node.value ?? 0;
      const share = ((100 * hits) / total).toFixed(2);
      const name = node.data.name;
      const label = `${name} (${hits} ${countName}, ${share}%)`;
      out.push(`<g class="frame"><title>${escapeXml(label)}</title>`);
      out.push(`<rect x="${x.toFixed(1)}" y="${y}" width="${w.toFixed(1)}" height="${frameHeightPx - 1}" rx="2" fill="${node.depth === 0 ? "#c0c0c0" : colourOf(name)}"/>`);
      const fits = Math.floor((w - 6) / (fontSizePx * glyphWidth));
      if (fits >= 3) {
        const text = name.length <= fits ? name : `${name.slice(0, fits - 2)}..`;
        out.push(`<text x="${(x + 3).toFixed(1)}" y="${y + frameHeightPx - 5}">${escapeXml(text)}</text>`);
      }
      out.push(`</g>`);
    }
  }
  out.push(`</svg>`);
  return out.join("\n") + "\n";
}
