// The submission form, enhanced: sends the same multipart body to POST /v1/jobs with the
// form's Idempotency-Key, opens the job's page on success, and on an error shows the
// problem above the form while keeping the chosen file and the typed spec. Without
// JavaScript the form posts to /jobs, which does the same on the server.
(function () {
  "use strict";
  var form = document.querySelector("form.submit");
  if (!form || !window.fetch || !window.FormData || !window.crypto) {
    return;
  }
  var box = document.getElementById("submit-error");
  var button = form.querySelector("button[type=submit]");
  var key = form.dataset.key;

  function newKey() {
    // crypto.randomUUID needs a secure context; the service is often plain http on a LAN.
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) {
      return (b < 16 ? "0" : "") + b.toString(16);
    }).join("");
  }

  function show(problem) {
    box.replaceChildren();
    var title = document.createElement("strong");
    title.textContent = problem.title || "Error";
    box.append(title);
    var where = problem.status ? " (" + problem.status + ", " + problem.code + ")" : "";
    box.append(where + ": " + (problem.detail || ""));
    if (problem.errors && problem.errors.length) {
      var list = document.createElement("ul");
      problem.errors.forEach(function (e) {
        var item = document.createElement("li");
        item.textContent = e.loc.join(".") + ": " + e.msg;
        list.append(item);
      });
      box.append(list);
    }
    box.hidden = false;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    button.disabled = true;
    fetch("/v1/jobs", {method: "POST", body: new FormData(form),
                       headers: {"Idempotency-Key": key}})
      .then(function (response) {
        return response.json().then(function (body) {
          if (response.ok) {
            window.location.assign("/jobs/" + encodeURIComponent(body.id));
            return;
          }
          // A refused request (bad spec, bad file) is corrected before it is sent again:
          // that is a new request with a new key. 429 and 5xx are retried as they were.
          if (response.status < 500 && response.status !== 429) {
            key = newKey();
          }
          show(body);
          button.disabled = false;
        });
      })
      .catch(function (error) {
        show({title: "Could not reach the service", detail: String(error)});
        button.disabled = false;
      });
  });
})();
