/**
 * A minimal hand-written SVG line chart (no dependency) for the benchmark figures:
 * axes with "nice" ticks, axis labels, a title, solid or dashed series and a legend.
 *
 *   const g = lineChart({ x: 0, y: 0, width: 480, height: 300, title, xLabel, yLabel, series });
 *   writeFileSync(file, svgDocument(width, height, [g, legend(...)]));
 *
 * series: [{ name, color, points: [[x, y], ...], dash?: boolean, marker?: boolean }]
 */

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const num = (x) => Number(x.toFixed(2));

/** About `count` round tick values covering [lo, hi]. */
export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const ticks = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function tickLabel(v) {
  if (Math.abs(v) >= 1e4) return v.toLocaleString('en-US');
  return String(Number(v.toPrecision(6)));
}

/**
 * One chart as an SVG <g> string. xDomain / yDomain default to the data range (y padded
 * a little); values outside the domain are clipped.
 */
export function lineChart({ x = 0, y = 0, width, height, title, xLabel, yLabel, series, xDomain, yDomain }) {
  const m = { left: 62, right: 24, top: 30, bottom: 44 };
  const pw = width - m.left - m.right;
  const ph = height - m.top - m.bottom;
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]));
  let [x0, x1] = xDomain ?? [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = yDomain ?? [Math.min(...ys), Math.max(...ys)];
  if (!yDomain) {
    const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.05 || 1;
    y0 -= pad;
    y1 += pad;
  }
  if (x1 === x0) x1 = x0 + 1;
  const xt = niceTicks(x0, x1, 5);
  const yt = niceTicks(y0, y1, 5);
  if (!yDomain) {
    y0 = Math.min(y0, yt[0]);
    y1 = Math.max(y1, yt[yt.length - 1]);
  }
  const px = (v) => m.left + ((v - x0) / (x1 - x0)) * pw;
  const py = (v) => m.top + ph - ((v - y0) / (y1 - y0)) * ph;
  const clipId = `clip${Math.round(x)}_${Math.round(y)}`;
  const out = [`<g transform="translate(${x},${y})" font-family="sans-serif" font-size="11">`];
  out.push(`<clipPath id="${clipId}"><rect x="${m.left}" y="${m.top}" width="${pw}" height="${ph}"/></clipPath>`);
  if (title) out.push(`<text x="${m.left + pw / 2}" y="${m.top - 12}" text-anchor="middle" font-size="13" font-weight="bold">${esc(title)}</text>`);
  // grid and ticks
  for (const v of yt) {
    if (v < y0 || v > y1) continue;
    const yy = num(py(v));
    out.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${yy}" y2="${yy}" stroke="#e4e4e4"/>`);
    out.push(`<line x1="${m.left - 4}" x2="${m.left}" y1="${yy}" y2="${yy}" stroke="#333"/>`);
    out.push(`<text x="${m.left - 7}" y="${yy + 4}" text-anchor="end">${tickLabel(v)}</text>`);
  }
  for (const v of xt) {
    if (v < x0 || v > x1) continue;
    const xx = num(px(v));
    out.push(`<line x1="${xx}" x2="${xx}" y1="${m.top}" y2="${m.top + ph}" stroke="#f0f0f0"/>`);
    out.push(`<line x1="${xx}" x2="${xx}" y1="${m.top + ph}" y2="${m.top + ph + 4}" stroke="#333"/>`);
    out.push(`<text x="${xx}" y="${m.top + ph + 16}" text-anchor="middle">${tickLabel(v)}</text>`);
  }
  // axes
  out.push(`<line x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + ph}" stroke="#333"/>`);
  out.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${m.top + ph}" y2="${m.top + ph}" stroke="#333"/>`);
  if (xLabel) out.push(`<text x="${m.left + pw / 2}" y="${height - 8}" text-anchor="middle">${esc(xLabel)}</text>`);
  if (yLabel)
    out.push(`<text transform="translate(14,${m.top + ph / 2}) rotate(-90)" text-anchor="middle">${esc(yLabel)}</text>`);
  // series
  out.push(`<g clip-path="url(#${clipId})">`);
  for (const s of series) {
    if (s.points.length === 0) continue;
    const d = s.points.map((p, i) => `${i ? 'L' : 'M'}${num(px(p[0]))},${num(py(p[1]))}`).join(' ');
    out.push(
      `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="${s.dash ? 1.3 : 1.8}"${s.dash ? ' stroke-dasharray="6 4"' : ''}/>`,
    );
    if (s.marker)
      for (const p of s.points) out.push(`<circle cx="${num(px(p[0]))}" cy="${num(py(p[1]))}" r="2.2" fill="${s.color}"/>`);
  }
  out.push('</g></g>');
  return out.join('\n');
}

/** A legend as an SVG <g>: entries [{ name, color, dash? }] in one row per entry. */
export function legend({ x, y, entries }) {
  const out = [`<g transform="translate(${x},${y})" font-family="sans-serif" font-size="11">`];
  entries.forEach((e, i) => {
    const yy = i * 16;
    out.push(
      `<line x1="0" x2="26" y1="${yy}" y2="${yy}" stroke="${e.color}" stroke-width="${e.dash ? 1.3 : 1.8}"${e.dash ? ' stroke-dasharray="6 4"' : ''}/>`,
    );
    out.push(`<text x="32" y="${yy + 4}">${esc(e.name)}</text>`);
  });
  out.push('</g>');
  return out.join('\n');
}

/** A complete SVG document of the given size around the parts (strings). */
export function svgDocument(width, height, parts, { caption } = {}) {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    ...parts,
    caption ? `<text x="10" y="${height - 8}" font-family="sans-serif" font-size="10" fill="#555">${esc(caption)}</text>` : '',
    '</svg>',
    '',
  ].join('\n');
}
