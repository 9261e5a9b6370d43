// infra-service console: live progress on a running job's page. Without
// this script the page is complete as it was rendered; with it, events are
// appended as they arrive and the page reloads once the job has finished.
"use strict";
(function () {
  var list = document.getElementById("events");
  if (!list || list.getAttribute("data-live") !== "true" || !window.EventSource) {
    return;
  }
  var seen = {};
  Array.prototype.forEach.call(list.querySelectorAll("li[data-id]"), function (li) {
    seen[li.getAttribute("data-id")] = true;
  });
  var after = list.getAttribute("data-last-id") || "0-0";
  var source = new EventSource(list.getAttribute("data-source") + "?after=" + encodeURIComponent(after));

  function describe(event) {
    if (event.event === "job_finished") {
      return "job finished: " + (event.status || "") + " " + (event.error_code || "");
    }
    var line = (event.event || "") + ": " + (event.task || "");
    if (event.host) { line += " on " + event.host; }
    if (event.changed === true) { line += " (changed)"; }
    if (event.message) { line += ": " + event.message; }
    return line;
  }

  function finish() {
    source.close();
    // The ledger is written just after the result: give it a moment.
    window.setTimeout(function () { window.location.reload(); }, 500);
  }

  source.onmessage = function (message) {
    if (seen[message.lastEventId]) { return; }
    seen[message.lastEventId] = true;
    var event;
    try { event = JSON.parse(message.data); } catch (e) { return; }
    var li = document.createElement("li");
    li.setAttribute("data-seq", String(event.seq || 0));
    li.setAttribute("data-event", String(event.event || ""));
    li.setAttribute("data-id", message.lastEventId);
    li.textContent = describe(event).trim();
    list.appendChild(li);
    if (event.event === "job_finished") { finish(); }
  };
  source.addEventListener("end", finish);
})();
