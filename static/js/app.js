// Modelhost's small hand-written enhancements: confirmation dialogs, copy buttons, the
// upload with a progress bar and drag-and-drop, and the "Try it" form. Every page works
// without this file (forms post to Django views, which ask for confirmation themselves).
(function () {
  "use strict";

  function csrfToken() {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || "";
    } catch (e) {
      return "";
    }
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) { node.setAttribute(name, attrs[name]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ------------------------------------------------------------------ confirmation

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute || !form.hasAttribute("data-confirm") || form.dataset.confirmed === "yes") return;
    event.preventDefault();
    var message = form.getAttribute("data-confirm");
    var label = form.getAttribute("data-confirm-label") || "Confirm";
    var dialog = document.getElementById("confirm-dialog");
    var accept = function (reason) {
      form.dataset.confirmed = "yes";
      var flag = form.querySelector("input[name=confirmed]") || form.appendChild(el("input", { type: "hidden", name: "confirmed" }));
      flag.value = "yes";
      var reasonInput = form.querySelector("input[name=reason]");
      if (reasonInput && reason !== undefined) reasonInput.value = reason;
      form.submit();
    };
    if (!dialog || typeof dialog.showModal !== "function") {
      if (window.confirm(message)) accept();
      return;
    }
    dialog.querySelector("#confirm-title").textContent = label + "?";
    dialog.querySelector("#confirm-message").textContent = message;
    dialog.querySelector("#confirm-ok").textContent = label;
    dialog.querySelector("button[value=cancel]").textContent = form.getAttribute("data-confirm-dismiss") || "Cancel";
    var reasonField = dialog.querySelector("#confirm-reason-field");
    var reasonBox = dialog.querySelector("#confirm-reason");
    reasonField.hidden = !form.hasAttribute("data-confirm-reason");
    reasonBox.value = "";
    dialog.returnValue = "";
    dialog.addEventListener("close", function onClose() {
      dialog.removeEventListener("close", onClose);
      if (dialog.returnValue === "confirm") accept(reasonField.hidden ? undefined : reasonBox.value);
    });
    dialog.showModal();
    dialog.querySelector("#confirm-ok").focus();
  });

  // ------------------------------------------------------------------ copy buttons

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-copy]");
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) return;
    var text = source.value !== undefined && source.tagName === "INPUT" ? source.value : source.textContent;
    var done = function () {
      var label = button.firstChild;
      var old = label.textContent;
      label.textContent = "Copied";
      setTimeout(function () { label.textContent = old; }, 1500);
    };
    var fallback = function () {
      var area = el("textarea", { "aria-hidden": "true", class: "offscreen" });
      area.value = text;
      document.body.appendChild(area);
      area.select();
      try { document.execCommand("copy"); } catch (e) { /* the text stays selectable */ }
      document.body.removeChild(area);
      done();
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, fallback);
    } else {
      fallback();
    }
  });

  // ------------------------------------------------------------------ field errors

  function clearErrors(form) {
    form.querySelectorAll(".error").forEach(function (p) { p.textContent = ""; p.hidden = true; });
    form.querySelectorAll("[aria-invalid]").forEach(function (input) { input.removeAttribute("aria-invalid"); });
    var general = form.querySelector(".form-errors");
    if (general) { general.textContent = ""; general.hidden = true; }
  }

  function showProblem(form, problem, fieldFor) {
    var general = form.querySelector(".form-errors");
    var placed = false;
    (problem.errors || []).forEach(function (item) {
      var id = fieldFor(item);
      var slot = id && form.querySelector("#error-" + id);
      if (slot) {
        slot.textContent = (slot.textContent ? slot.textContent + " " : "") + item.message;
        slot.hidden = false;
        var input = slot.parentNode.querySelector("input, select, textarea");
        if (input) input.setAttribute("aria-invalid", "true");
        placed = true;
      }
    });
    if (!placed && general) {
      general.textContent = problem.detail || problem.title || "Something went wrong.";
      general.hidden = false;
    }
  }

  function readProblem(text, status) {
    try {
      return JSON.parse(text);
    } catch (e) {
      return { detail: status === 413 ? "The file is larger than the upload limit." : "The server answered " + status + "." };
    }
  }

  // ------------------------------------------------------------------ upload

  function setUpUpload(form) {
    var fileInput = form.querySelector("input[type=file][name=file]");
    var zone = form.querySelector("#dropzone");
    var progress = form.querySelector("#upload-progress");
    var bar = form.querySelector("#upload-bar");
    var status = form.querySelector("#upload-status");
    var submit = form.querySelector("#upload-submit");
    var general = el("div", { class: "errors form-errors", role: "alert" });
    general.hidden = true;
    form.insertBefore(general, zone || form.firstChild);

    if (zone && fileInput) {
      ["dragenter", "dragover"].forEach(function (name) {
        form.addEventListener(name, function (event) { event.preventDefault(); zone.classList.add("over"); });
      });
      ["dragleave", "drop"].forEach(function (name) {
        form.addEventListener(name, function () { zone.classList.remove("over"); });
      });
      form.addEventListener("drop", function (event) {
        event.preventDefault();
        if (!event.dataTransfer || !event.dataTransfer.files.length) return;
        fileInput.files = event.dataTransfer.files;
        zone.querySelector("p").textContent = "Chosen: " + event.dataTransfer.files[0].name;
      });
      fileInput.addEventListener("change", function () {
        if (fileInput.files.length) zone.querySelector("p").textContent = "Chosen: " + fileInput.files[0].name;
      });
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      clearErrors(form);
      if (!fileInput.files.length) {
        showProblem(form, { errors: [{ field: "file", message: "Choose a model file." }] }, function (e) { return e.field; });
        fileInput.focus();
        return;
      }
      var data = new FormData(form);
      data.delete("csrfmiddlewaretoken");
      Array.from(data.keys()).forEach(function (name) {
        var value = data.get(name);
        if (value === "" || (value instanceof File && !value.name)) data.delete(name);
      });
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.getAttribute("data-api-url"));
      xhr.setRequestHeader("X-CSRFToken", csrfToken());
      xhr.setRequestHeader("Accept", "application/json");
      progress.hidden = false;
      bar.value = 0;
      status.textContent = "Uploading…";
      submit.disabled = true;
      xhr.upload.onprogress = function (e) {
        if (!e.lengthComputable) return;
        var pct = Math.round((e.loaded / e.total) * 100);
        bar.value = pct;
        bar.textContent = pct + "%";
        status.textContent = pct < 100 ? "Uploading… " + pct + "%" : "Checking the model in a sandbox…";
      };
      xhr.onload = function () {
        submit.disabled = false;
        if (xhr.status === 201) {
          var version = JSON.parse(xhr.responseText);
          bar.value = 100;
          status.textContent = "Version " + version.number + " uploaded and checked.";
          form.reset();
          if (zone) zone.querySelector("p").textContent = "Drop another model file here, or choose one below.";
          var target = form.getAttribute("data-refresh");
          if (window.htmx && target) {
            window.htmx.ajax("GET", window.location.pathname, { target: target, select: target, swap: "outerHTML" });
          }
          return;
        }
        status.textContent = "Upload refused.";
        showProblem(form, readProblem(xhr.responseText, xhr.status), function (item) {
          var field = (item.field || "").split(".")[0];
          return field === "signature" ? "input_example" : field;
        });
      };
      xhr.onerror = function () {
        submit.disabled = false;
        status.textContent = "The upload failed: the connection was lost.";
      };
      xhr.send(data);
    });
  }

  // ------------------------------------------------------------------ try it

  function setUpTry(form) {
    var columns = JSON.parse(document.getElementById("try-columns").textContent);
    var result = document.getElementById("try-result");
    var general = document.getElementById("try-errors");
    general.classList.add("form-errors");
    var wantProba = form.getAttribute("data-want-proba") === "true";

    function value(column, index) {
      var raw = form.querySelector("#col-" + index).value;
      if (raw === "") return null;
      if (column.type === "boolean") return raw === "true";
      if (["double", "float", "long", "integer"].indexOf(column.type) >= 0) {
        var number = Number(raw);
        return isNaN(number) ? raw : number;
      }
      return raw;
    }

    function fmt(n) { return typeof n === "number" ? (Math.round(n * 1000) / 1000).toString() : String(n); }

    // A diverging bar per feature, largest first: right (positive) pushes the explained output
    // up from the base value, left pulls it down; the figures are in the text too.
    function renderExplanation(explainer, explanation) {
      var names = Object.keys(explanation.contributions);
      var largest = names.reduce(function (m, n) { return Math.max(m, Math.abs(explanation.contributions[n])); }, 0) || 1;
      names.sort(function (a, b) { return Math.abs(explanation.contributions[b]) - Math.abs(explanation.contributions[a]); });
      var section = el("section", { class: "explanation", "aria-labelledby": "explain-title" });
      section.appendChild(el("h3", { id: "explain-title" }, "Why: contributions to the " + explainer.output));
      var list = el("ul", { class: "contrib", "aria-label": "Contribution per feature" });
      names.forEach(function (name) {
        var v = explanation.contributions[name];
        var item = el("li");
        item.appendChild(el("span", { class: "bar-label" }, name));
        var track = el("span", { class: "contrib-bar", "aria-hidden": "true" });
        var fill = el("span", { class: "fill " + (v >= 0 ? "up" : "down") });
        fill.style.width = (Math.abs(v) / largest) * 50 + "%";
        track.appendChild(fill);
        item.appendChild(track);
        item.appendChild(el("span", { class: "bar-value" }, (v >= 0 ? "+" : "") + fmt(v)));
        list.appendChild(item);
      });
      section.appendChild(list);
      section.appendChild(el("p", { class: "help", id: "explain-sum" },
        "Base value " + fmt(explanation.base_value) + " + contributions = " + fmt(explanation.value) + " (" + explainer.method.replace("_", " ") + ")."));
      result.appendChild(section);
    }

    function render(body, cacheHeader, roundTrip, note) {
      result.textContent = "";
      var prediction = body.predictions[0];
      result.appendChild(el("p", { class: "prediction" }, "Prediction: " + fmt(prediction)));
      if (body.probabilities && body.classes) {
        var list = el("ul", { class: "bars", "aria-label": "Probability per class" });
        body.probabilities[0].forEach(function (p, i) {
          var item = el("li");
          var pct = Math.round(p * 1000) / 10;
          item.appendChild(el("span", { class: "bar-label" }, String(body.classes[i])));
          var track = el("span", { class: "bar", "aria-hidden": "true" });
          var fill = el("span", { class: "fill" + (body.classes[i] === prediction ? " top" : "") });
          fill.style.width = pct + "%";
          track.appendChild(fill);
          item.appendChild(track);
          item.appendChild(el("span", { class: "bar-value" }, pct + "%"));
          list.appendChild(item);
        });
        result.appendChild(list);
      }
      if (body.explanations) renderExplanation(body.explainer, body.explanations[0]);
      else if (note) result.appendChild(el("p", { class: "help", id: "try-explain-note" }, note));
      var facts = el("dl", { class: "facts" });
      [
        ["Latency (server)", fmt(body.latency_ms) + " ms"],
        ["Round trip", roundTrip + " ms"],
        ["Cache", (body.cache_hit ? "hit" : "miss") + (cacheHeader ? " (X-Cache: " + cacheHeader + ")" : "")],
        ["Version", "v" + body.version],
        ["Prediction id", body.id],
      ].forEach(function (pair) {
        var div = el("div");
        div.appendChild(el("dt", {}, pair[0]));
        div.appendChild(el("dd", {}, pair[1]));
        facts.appendChild(div);
      });
      result.appendChild(facts);
    }

    var explainBox = form.querySelector("#try-explain");

    function send(row, explain, note) {
      var body = { inputs: [row], parameters: {} };
      if (wantProba) body.parameters.probabilities = true;
      if (explain) body.parameters.explain = true;
      var started = performance.now();
      result.setAttribute("aria-busy", "true");
      fetch(form.getAttribute("data-predict-url"), {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken() },
        body: JSON.stringify(body),
      }).then(function (response) {
        var roundTrip = Math.round(performance.now() - started);
        return response.text().then(function (text) {
          result.removeAttribute("aria-busy");
          if (response.ok) {
            render(JSON.parse(text), response.headers.get("X-Cache"), roundTrip, note);
            return;
          }
          var problem = readProblem(text, response.status);
          if (explain && problem.code === "explanation_unavailable") {
            // The prediction without its explanation, and why there is none.
            send(row, false, "No explanation: " + problem.detail);
            return;
          }
          result.textContent = "";
          result.appendChild(el("p", { class: "help" }, "No answer: see the message above the form."));
          showProblem(form, problem, function (item) {
            var index = columns.findIndex(function (c) { return c.name === item.column; });
            return index >= 0 ? "col-" + index : null;
          });
        });
      }).catch(function () {
        result.removeAttribute("aria-busy");
        general.textContent = "The request failed: the connection was lost.";
        general.hidden = false;
      });
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      clearErrors(form);
      send(columns.map(value), explainBox !== null && explainBox.checked, null);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var upload = document.getElementById("upload-form");
    if (upload && window.FormData && window.XMLHttpRequest) setUpUpload(upload);
    var tryForm = document.getElementById("try-form");
    if (tryForm) setUpTry(tryForm);
  });
})();
