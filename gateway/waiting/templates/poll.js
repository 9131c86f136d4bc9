(function () {
  "use strict";
  var node = document.getElementById("sg-config");
  if (!node) return;
  var cfg = JSON.parse(node.textContent);
  var position = document.getElementById("sg-position");
  var eta = document.getElementById("sg-eta");
  var failures = 0;

  function etaText(seconds) {
    if (typeof seconds !== "number" || !(seconds >= 0)) return cfg.eta.unknown;
    for (var i = 0; i < cfg.eta.steps.length; i++) {
      if (seconds < cfg.eta.steps[i][0]) return cfg.eta.steps[i][1];
    }
    return cfg.eta.beyond;
  }

  // Only touch the live region when the text changes: every write is read
  // out again by screen readers.
  function show(element, value) {
    if (element && element.textContent !== value) element.textContent = value;
  }

  function later(seconds) {
    var s = Math.min(Math.max(Number(seconds) || cfg.every, cfg.min), cfg.max);
    window.setTimeout(poll, s * 1000);
  }

  function retryLater(hint) {
    // Back off while the gateway is unreachable, but never give up: the
    // visitor is still holding a place in line.
    failures = Math.min(failures + 1, 4);
    later(Math.max(Number(hint) || 0, cfg.every * Math.pow(2, failures)));
  }

  function poll() {
    if (!window.fetch) {
      window.location.replace(cfg.url);
      return;
    }
    window.fetch(cfg.status, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
      cache: "no-store"
    }).then(function (response) {
      return response.json();
    }).then(function (state) {
      if (state && state.state === "go") {
        window.location.replace(cfg.url);
      } else if (state && state.state === "wait") {
        failures = 0;
        if (typeof state.position === "number") show(position, String(state.position));
        show(eta, etaText(state.eta));
        later(state.retry_after);
      } else {
        retryLater(state && state.retry_after);
      }
    }).catch(function () {
      retryLater(0);
    });
  }

  later(cfg.every);
})();
