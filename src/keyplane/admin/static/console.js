/* Keyplane console: small progressive enhancements, no dependencies.
   - copy buttons ([data-copy] names the element whose text is copied)
   - the one-time secret dialog: modal, closes only once "I have stored my key" is ticked
   - scope grids: ticking Edit ticks View; unticking View unticks Edit
   - rotate: the grace period applies only to "expire the old key later" */
(function () {
  "use strict";

  function announce(text) {
    var region = document.getElementById("announcer");
    if (!region) return;
    region.textContent = "";
    window.setTimeout(function () { region.textContent = text; }, 50);
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "offscreen";
      document.body.appendChild(area);
      area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      document.body.removeChild(area);
      if (ok) { resolve(); } else { reject(new Error("copy failed")); }
    });
  }

  function setUpCopy(button) {
    var shown = button.querySelector("[data-copy-label]") || button;
    var label = shown.textContent;
    button.addEventListener("click", function () {
      var source = document.getElementById(button.getAttribute("data-copy"));
      if (!source) return;
      copyText(source.textContent.trim()).then(function () {
        shown.textContent = "Copied";
        announce("Copied to the clipboard");
      }, function () {
        var range = document.createRange();
        range.selectNodeContents(source);
        var selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        announce("Select and copy the highlighted text");
      });
      window.setTimeout(function () { shown.textContent = label; }, 2000);
    });
  }

  function setUpOneTime(dialog) {
    var stored = dialog.querySelector("[data-stored]");
    var next = dialog.querySelector("[data-continue]");
    if (typeof dialog.showModal === "function") {
      if (dialog.open) dialog.close();
      dialog.showModal();
    }
    // a reload must not post the form again: the page's address becomes the key's own page
    if (dialog.getAttribute("data-url") && window.history.replaceState) {
      window.history.replaceState(null, "", dialog.getAttribute("data-url"));
    }
    stored.addEventListener("change", function () {
      next.disabled = !stored.checked;
    });
    dialog.addEventListener("cancel", function (event) {
      if (!stored.checked) {
        event.preventDefault();
        announce("Tick “I have stored my key” first");
      }
    });
    dialog.addEventListener("close", function () {
      if (!stored.checked && !dialog.open) dialog.showModal();
    });
  }

  function setUpScopes(box) {
    box.addEventListener("change", function () {
      var area = box.getAttribute("data-area");
      var grid = box.closest(".scope-row");
      if (!grid) return;
      var kind = box.getAttribute("data-kind");
      if (kind === "edit" && box.checked) {
        var view = grid.querySelector("input[data-kind=view][data-area='" + area + "']");
        if (view && !view.disabled) view.checked = true;
      }
      if (kind === "view" && !box.checked) {
        var edit = grid.querySelector("input[data-kind=edit][data-area='" + area + "']");
        if (edit && !edit.disabled) edit.checked = false;
      }
    });
  }

  function setUpRotate(form) {
    var days = form.querySelector("#grace_days");
    var radios = form.querySelectorAll("input[name=expire]");
    function sync() {
      var later = form.querySelector("input[name=expire]:checked");
      days.disabled = !!later && later.value === "now";
    }
    radios.forEach(function (r) { r.addEventListener("change", sync); });
    sync();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-copy]").forEach(setUpCopy);
    document.querySelectorAll("input[data-kind]").forEach(setUpScopes);
    document.querySelectorAll("dialog[data-one-time]").forEach(setUpOneTime);
    var rotate = document.getElementById("grace_days");
    if (rotate) setUpRotate(rotate.form);
    var summary = document.getElementById("error-summary");
    if (summary && !document.querySelector("dialog[open]")) {
      var first = document.querySelector("[aria-invalid=true]");
      (first || summary).focus();
    }
  });
})();
