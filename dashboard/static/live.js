// Live counts for running batches: polls /api/batches for the ones on the page, once a second.
"use strict";

const POLL_MS = 1000;

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.round(seconds);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function show(row, status) {
  const set = (name, value) => {
    for (const el of row.querySelectorAll('[data-field="' + name + '"]')) el.textContent = value;
  };
  // The counts: each element names its count as the answer does (the batch's fields in Redis).
  for (const el of row.querySelectorAll("[data-field]")) {
    const value = status[el.dataset.field];
    if (typeof value === "number") el.textContent = value;
  }
  set("pending", status.total - status.created - status.failed);
  set("percent", status.percent.toFixed(1));
  for (const bar of row.querySelectorAll('[data-field="bar"]')) {
    bar.max = status.total || 1;
    bar.value = status.created + status.failed;
  }
  set("when", status.done
    ? "completed " + status.completed_at
    : (status.rate === null ? "-/s" : status.rate + "/s") + " · ETA " + duration(status.eta_s));
}

async function poll() {
  const rows = [...document.querySelectorAll("[data-batch][data-running]")];
  if (!rows.length) return;
  const query = rows.map((row) => "id=" + encodeURIComponent(row.dataset.batch)).join("&");
  try {
    const answer = await fetch("/api/batches?" + query, { credentials: "same-origin" });
    if (!answer.ok) return;
    const found = await answer.json();
    for (const row of rows) {
      const status = found[row.dataset.batch];
      if (!status) continue;
      show(row, status);
      if (status.done) {
        delete row.dataset.running;
        // A finished batch's page has more to show (its failures): load it afresh.
        if ("reloadWhenDone" in row.dataset) location.reload();
      }
    }
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function confirmActions() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  confirmActions();
  setTimeout(poll, POLL_MS);
});
