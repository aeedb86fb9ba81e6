// Keyboard shortcuts for the labeling form. The page works without this script: every
// shortcut presses one of the form's submit buttons, so votes always go through the form.
"use strict";
(function () {
  const form = document.getElementById("vote-form");
  if (!form) {
    return;
  }
  const keys = {
    "1": "A", a: "A",
    "2": "B", b: "B",
    "3": "tie", t: "tie",
    "4": "both_bad", x: "both_bad",
    s: "skip",
  };
  let sent = false;
  form.addEventListener("submit", function (event) {
    // One vote per page: a second key press while the first post is in flight is ignored.
    if (sent) {
      event.preventDefault();
      return;
    }
    sent = true;
    form.classList.add("sending");
  });
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) {
      return;
    }
    const target = event.target;
    if (target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT")) {
      if (event.key === "Escape") {
        target.blur();
      }
      return;
    }
    if (event.key === "r") {
      event.preventDefault();
      document.getElementById("reason").focus();
      return;
    }
    const choice = keys[event.key.toLowerCase()];
    if (!choice) {
      return;
    }
    const button = form.querySelector('button[value="' + choice + '"]');
    if (button) {
      event.preventDefault();
      button.classList.add("pressed");
      form.requestSubmit(button);
    }
  });
})();
