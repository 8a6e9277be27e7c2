// kaon's web UI: follows a running run and a running step's log. Plain
// JavaScript, no packages; the server renders everything else.
"use strict";

function followRun(live) {
  const run = live.dataset.run;
  let busy = false, again = false;
  const refresh = async () => {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const r = await fetch(`/ui/runs/${run}/fragment`);
      if (r.ok) {
        const box = document.createElement("div");
        box.innerHTML = await r.text();
        const fresh = box.querySelector("#live");
        if (fresh) {
          live.innerHTML = fresh.innerHTML;
          live.dataset.status = fresh.dataset.status;
          if (fresh.dataset.status !== "running") {
            document.querySelectorAll("#cancel").forEach((b) => b.remove());
          }
        }
      }
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  };
  const source = new EventSource(`/ui/runs/${run}/live?after=${live.dataset.after}`);
  source.addEventListener("change", refresh);
  source.addEventListener("end", () => { source.close(); refresh(); });
  source.addEventListener("failed", () => source.close());
}

function followLog(pre) {
  const { run, path, stream } = pre.dataset;
  const encoded = path.split("/").map(encodeURIComponent).join("/");
  const poll = async () => {
    const r = await fetch(`/ui/runs/${run}/log/${encoded}?stream=${stream}&offset=${pre.dataset.offset}`);
    if (!r.ok) return;
    const piece = await r.json();
    if (piece.data) {
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(piece.data);
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }
    pre.dataset.offset = piece.offset;
    if (!piece.complete) setTimeout(poll, 1000);
  };
  setTimeout(poll, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live && live.dataset.status === "running") followRun(live);
  document.querySelectorAll("pre.log").forEach((pre) => {
    if (pre.dataset.complete !== "true") followLog(pre);
  });
});
