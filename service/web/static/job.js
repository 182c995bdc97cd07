// The live job page: follows the job's server-sent events (/v1/jobs/{id}/events) and
// updates its status and progress in place; when the job ends it reloads, so that the
// server renders the report. Job data only ever goes into textContent, never into markup.
// The text and fraction mirror service/web/pages.py (progress_text, progress_fraction).
(function () {
  "use strict";
  var root = document.getElementById("job");
  if (!root || root.dataset.terminal === "true" || !window.EventSource) {
    return;
  }
  var TERMINAL = ["succeeded", "failed", "cancelled"];
  var statusEl = document.getElementById("job-status");
  var phaseEl = document.getElementById("job-phase");
  var bar = document.getElementById("job-progress");

  var COUNTERS = [["round", "rounds"], ["trial", "trials"]];

  function describe(p) {
    if (!p) {
      return "";
    }
    var parts = [p.phase];
    COUNTERS.forEach(function (c) {
      if (p[c[0]] !== null && p[c[0]] !== undefined && p[c[1]]) {
        parts.push(c[0] + " " + p[c[0]] + "/" + p[c[1]]);
      }
    });
    if (p.tensor !== null && p.tensor !== undefined) {
      parts.push(String(p.tensor));
    }
    if (p.sparsity !== null && p.sparsity !== undefined) {
      parts.push("sparsity " + (p.sparsity * 100).toFixed(1) + "%");
    }
    if (p.epoch !== null && p.epochs) {
      parts.push("epoch " + p.epoch + "/" + p.epochs);
    }
    if (p.step !== null && p.steps) {
      parts.push("step " + p.step + "/" + p.steps);
    }
    if (p.loss !== null && p.loss !== undefined) {
      parts.push("loss " + p.loss.toFixed(4));
    }
    return parts.join(" \u00b7 ");
  }

  function fraction(job) {
    var p = job.progress;
    if (job.status === "succeeded" || (p && p.phase === "done")) {
      return 1;
    }
    if (!p || p.phase === "queued") {
      return 0;
    }
    var within = null;
    if (p.phase === "finetuning" && p.epoch && p.epochs && p.step !== null && p.steps) {
      within = (p.epoch - 1 + p.step / p.steps) / p.epochs;
    }
    COUNTERS.forEach(function (c) {
      if (p[c[0]] && p[c[1]]) {
        within = (p[c[0]] - 1 + (within || 0)) / p[c[1]];
      }
    });
    return within;
  }

  var source = new EventSource(root.dataset.events);
  source.addEventListener("job", function (event) {
    var job = JSON.parse(event.data);
    statusEl.textContent = job.status;
    statusEl.className = "status " + job.status;
    phaseEl.textContent = describe(job.progress);
    var f = fraction(job);
    if (f === null) {
      bar.removeAttribute("value");
    } else {
      bar.value = f;
    }
    root.dataset.status = job.status;
    if (TERMINAL.indexOf(job.status) >= 0) {
      source.close();
      window.location.reload();
    }
  });
})();
