// The console's script: new calls in the live view, and the chain check.
// Values are set with textContent, never parsed as HTML.
"use strict";
(function () {
  function cell(tr, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    tr.appendChild(td);
    return td;
  }

  // One row, the same cells as the server renders.
  function row(record) {
    const tr = document.createElement("tr");
    tr.dataset.seq = String(record.seq);
    tr.className = "decision-" + record.decision;
    const first = document.createElement("td");
    const link = document.createElement("a");
    link.href = "/admin/exchange/" + encodeURIComponent(String(record.seq));
    link.textContent = String(record.seq);
    first.appendChild(link);
    tr.appendChild(first);
    cell(tr, record.time);
    cell(tr, record.client);
    cell(tr, record.server || "");
    cell(tr, record.method);
    cell(tr, record.target || record.method);
    cell(tr, record.decision, "decision");
    cell(tr, record.decided_by || "");
    const detail = record.detail || {};
    const answered = detail.answer && detail.answer.shadow;
    let shown = "";
    if (detail.shadow && detail.shadow.differs === true) {
      shown = String(detail.shadow.decision);
    } else if (answered && answered.differs === true) {
      shown = "answer: " + String(answered.decision);
    }
    cell(tr, shown, "shadow");
    cell(tr, (record.total_us / 1000).toFixed(1), "num");
    return tr;
  }

  const table = document.getElementById("calls");
  if (table) {
    let last = Number(table.dataset.lastSeq || "0");
    const filter = table.dataset.filter || "";
    const body = table.tBodies[0];
    const poll = async function () {
      try {
        const url = "/admin/audit?kind=exchange&limit=500&after=" + last +
          (filter ? "&" + filter : "");
        const answer = await fetch(url, { credentials: "same-origin" });
        if (answer.status === 401) {
          window.location.assign("/admin/");
          return;
        }
        if (answer.ok) {
          const page = await answer.json();
          for (const record of page.records) {
            body.insertBefore(row(record), body.firstChild);
            last = Math.max(last, record.seq);
          }
          if (page.records.length === 0 && page.last_seq > last) {
            last = page.last_seq;
          }
          while (body.rows.length > 500) body.deleteRow(-1);
        }
      } catch (err) {
        // The proxy is restarting or the network is down: try again.
      }
      window.setTimeout(poll, 1000);
    };
    window.setTimeout(poll, 1000);
  }

  const verify = document.getElementById("verify");
  if (verify) {
    const state = document.getElementById("verify-state");
    verify.addEventListener("click", async function () {
      state.textContent = "checking…";
      state.className = "";
      try {
        const answer = await fetch("/admin/audit/verify", { credentials: "same-origin" });
        const result = await answer.json();
        if (result.state === "intact") {
          state.textContent = "intact: " + result.records + " records from " + result.first_seq;
          state.className = "ok";
        } else if (result.state === "broken") {
          state.textContent = "BROKEN at record " + result.seq + ": " + result.problem;
          state.className = "bad";
        } else {
          state.textContent = result.error || "cannot verify";
          state.className = "bad";
        }
      } catch (err) {
        state.textContent = "cannot reach the proxy";
        state.className = "bad";
      }
    });
  }
})();
