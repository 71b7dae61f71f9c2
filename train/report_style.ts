/**
 * The inline stylesheet of report.html (train/report.ts): system fonts only (nothing to
 * download), a light print-friendly look, and the classes the report's markup and SVG use.
 */

/** CSS placed in the report's `<style>` element. */
export const REPORT_CSS = `
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f3f5f8; color: #1d2330;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1160px; margin: 0 auto; padding: 20px 24px 40px; }
header { margin-bottom: 8px; }
h1 { font-size: 26px; margin: 4px 0 2px; }
h2 { font-size: 18px; margin: 0 0 12px; border-bottom: 1px solid #dde2ea; padding-bottom: 6px; }
h3 { font-size: 14px; margin: 0 0 8px; color: #4a5468; text-transform: uppercase;
  letter-spacing: .04em; }
.subtitle { color: #5b6579; margin: 0 0 12px; }
section { background: #fff; border: 1px solid #dde2ea; border-radius: 8px; padding: 16px 18px;
  margin: 14px 0; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 12px; }
.card { background: #fff; border: 1px solid #dde2ea; border-radius: 8px; padding: 10px 16px;
  min-width: 150px; }
.card .k { color: #5b6579; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card:first-child { border-color: #5f3dc4; box-shadow: inset 4px 0 0 #5f3dc4; }
.na { color: #7a8396; font-style: italic; background: #f7f8fa; border: 1px dashed #ccd2dc;
  border-radius: 6px; padding: 10px 12px; margin: 6px 0; }
.muted { color: #7a8396; }
.caption { color: #5b6579; font-size: 12.5px; margin: 6px 0 0; }
.num { font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; }
details summary { cursor: pointer; color: #1f5fa8; }
table.config { margin-top: 8px; font-size: 13px; }
table.config th { text-align: left; font-weight: 500; color: #4a5468; padding: 2px 16px 2px 0;
  vertical-align: top; font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
table.config td { padding: 2px 0; font-family: ui-monospace, "DejaVu Sans Mono", monospace;
  word-break: break-all; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; }
figure { margin: 0; }
svg.plot { display: block; width: 100%; max-width: 760px; height: auto; font-size: 12px;
  font-family: inherit; }
svg.plot .plot-title { font-size: 14px; font-weight: 600; fill: #1d2330; }
svg.plot .tick { fill: #4a5468; font-size: 11px; }
svg.plot .axis-label { fill: #1d2330; font-size: 12px; }
svg.plot .legend { fill: #1d2330; font-size: 12px; }
svg.plot .grid { stroke: #e6e9ef; stroke-width: 1; }
svg.plot .axis, svg.plot .tick-mark { stroke: #6b7486; stroke-width: 1; }
svg.plot .bin { fill: #4c7fbf; }
svg.plot .mean { stroke: #d9480f; stroke-width: 2; }
.eval { display: grid; grid-template-columns: minmax(0, 5fr) minmax(0, 6fr); gap: 24px; }
.scroll { overflow-x: auto; }
table.per-class { width: 100%; font-size: 13px; }
table.per-class th, table.per-class td { padding: 4px 8px; border-bottom: 1px solid #eef0f4;
  text-align: right; }
table.per-class th:first-child { text-align: left; }
table.per-class thead th { color: #4a5468; font-weight: 600; }
td.recall { min-width: 150px; }
td.recall > div.cell { display: flex; align-items: center; gap: 8px; }
.bar { flex: 1; height: 12px; background: #eef0f4; border-radius: 3px; overflow: hidden; }
.bar > div { height: 100%; background: #5f3dc4; }
table.confusion { font-size: 13px; }
table.confusion th { font-weight: 500; color: #4a5468; padding: 4px 6px; text-align: right; }
table.confusion th { white-space: nowrap; }
table.confusion th.col { text-align: center; }
table.confusion th.corner { font-size: 11px; color: #7a8396; }
table.confusion td { min-width: 46px; height: 42px; padding: 0 4px; text-align: center; border: 1px solid #fff;
  font-variant-numeric: tabular-nums; font-weight: 600; }
table.confusion td small { display: block; font-weight: 400; font-size: 10.5px; opacity: .8; }
table.confusion td.dark { color: #fff; }
table.confusion td.diag { outline: 2px solid #1d2330; outline-offset: -2px; }
table.confusion .total { color: #5b6579; font-weight: 400; background: none; }
ul.warnings { margin: 12px 0 0; padding-left: 20px; color: #8a4b00; }
.samples { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr));
  gap: 12px; }
.sample { display: flex; gap: 10px; border: 1px solid #dde2ea; border-radius: 8px; padding: 8px;
  background: #fbfcfd; align-items: flex-start; }
.sample.right { border-left: 4px solid #2b8a3e; }
.sample.wrong { border-left: 4px solid #c92a2a; }
.sample img, .sample .no-image { width: 112px; height: 112px; object-fit: cover; flex: none;
  border-radius: 4px; background: #e9ecf1; }
.sample img.pixelated { image-rendering: pixelated; }
.sample .no-image { display: flex; align-items: center; justify-content: center;
  color: #7a8396; font-size: 12px; }
.sample figcaption { min-width: 0; font-size: 12.5px; }
.tags { display: flex; flex-wrap: wrap; gap: 4px; margin-bottom: 3px; }
.tag { background: #eef0f4; border-radius: 4px; padding: 1px 6px; }
.tag.right { background: #d3f9d8; }
.tag.wrong { background: #ffe3e3; }
.meta { color: #5b6579; margin-bottom: 3px; }
.report-text { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; color: #2b3242; }
table.skipped td, table.skipped th { padding: 2px 12px 2px 0; text-align: left; }
@media (max-width: 900px) { .eval { grid-template-columns: 1fr; } }
`;
