// Live updates for pages that work without it: the overview swaps in the parts /live sends; an operation page
// appends the events its stream sends (resuming with Last-Event-ID); forms that change something already
// go through a confirmation page, so no dialog is needed here.
"use strict";

function followOverview(first) {
  // One stream, two parts: `activity` (operations, a freeze) on every event, `apps` (the grid) on changes.
  const source = new EventSource(first.dataset.live);
  for (const part of ["activity", "apps"]) {
    source.addEventListener(part, (message) => {
      const region = document.querySelector(`[data-part="${part}"]`);
      const update = JSON.parse(message.data);
      region.innerHTML = update.html;
      region.dataset.updatedAt = String(update.at);
    });
  }
}

function followOperation(log) {
  const source = new EventSource(log.dataset.stream);
  source.addEventListener("progress", (message) => {
    const event = JSON.parse(message.data);
    if (message.lastEventId && log.querySelector(`[data-id="${message.lastEventId}"]`)) return;
    const line = document.createElement("span");
    if (message.lastEventId) line.dataset.id = message.lastEventId;
    line.textContent = `[${event.step}] ${event.message}\n`;
    log.appendChild(line);
    log.scrollTop = log.scrollHeight;
  });
  source.addEventListener("end", (message) => {
    source.close();
    const op = JSON.parse(message.data);
    const state = document.getElementById("op-state");
    if (state && op) state.innerHTML = `<span class="badge s-${op.state}">${op.state}</span>`;
    const result = document.getElementById("op-result");
    const release = op && op.result && (op.result.release || op.result);
    if (result && release && release.env && release.number) {
      const link = document.createElement("a");
      link.href = `/apps/${encodeURIComponent(op.app)}/releases/${release.env}/${release.number}`;
      link.textContent = `${release.env}#${release.number}`;
      const p = document.createElement("p");
      p.append("Release: ", link, ` ${release.status}`);
      result.replaceChildren(p);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const region = document.querySelector("[data-live]");
  if (region) followOverview(region);
  const log = document.querySelector("[data-stream]");
  if (log && !log.dataset.finished) followOperation(log);
});
