/* The official gpt-image-2 size rules, ported line for line from imagerelay/domain/sizes.py
 * (official_problems, nearest_official, check_official_size) so the playground can explain a
 * refused custom size while the user types, in the very words the gateway would use.
 * tests/console/test_playground_sizes.py runs a table of sizes through both and compares.
 * Plain script (no modules, no build step): defines window.ImagerelaySizes. */
(function (global) {
  "use strict";

  var MAX_EDGE = 3840;
  var MIN_PIXELS = 655360;
  var MAX_PIXELS = 8294400;
  var MAX_RATIO = 3;
  var STEP = 16;
  var EXAMPLES = ["1024x1024", "1536x1024", "3840x2160"];

  var CANONICAL = /^[1-9][0-9]{0,5}x[1-9][0-9]{0,5}$/;
  var LOOSE = /^\s*0*([1-9][0-9]{0,5})\s*[xX*\u00d7]\s*0*([1-9][0-9]{0,5})\s*$/;

  function parseSize(value) {
    if (typeof value !== "string" || !CANONICAL.test(value)) return null;
    var parts = value.split("x");
    return [parseInt(parts[0], 10), parseInt(parts[1], 10)];
  }

  // Python's whitespace for str.strip() includes more than JS's trim() on exotic input; the
  // shared cases (spaces, tabs, newlines) agree, which is all a size field ever holds.
  function spellingHint(value) {
    if (value !== "auto" && value.trim().toLowerCase() === "auto") return "auto";
    var m = LOOSE.exec(value);
    if (m === null) return null;
    return parseInt(m[1], 10) + "x" + parseInt(m[2], 10);
  }

  function show(value) {
    return value.length <= 40 ? value : value.slice(0, 40) + "\u2026";
  }

  function grouped(n) { // Python's "{:,}"
    return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  // Python's "{:.Nf}": the exact binary value rounded, ties to even. JS toFixed rounds ties
  // up; an exact tie at N decimals is a double x with x * 2^(N+1) an odd integer.
  function fixed(x, digits) {
    var scaledTie = x * Math.pow(2, digits + 1);
    if (Number.isInteger(scaledTie) && scaledTie % 2 === 1) {
      var scale = Math.pow(10, digits);
      var n = Math.floor(x * scale); // exact: x * 10^N is a half-integer well inside 2^53
      if (n % 2 === 1) n += 1;
      var whole = Math.floor(n / scale);
      var frac = String(n - whole * scale);
      while (frac.length < digits) frac = "0" + frac;
      return whole + "." + frac;
    }
    return x.toFixed(digits);
  }

  function officialProblems(width, height) {
    var problems = [];
    if (width % STEP || height % STEP) problems.push("width and height must both be divisible by 16");
    var longEdge = Math.max(width, height), shortEdge = Math.min(width, height);
    if (longEdge > MAX_EDGE) problems.push("the longest edge must be at most " + MAX_EDGE + " (got " + longEdge + ")");
    if (longEdge > MAX_RATIO * shortEdge) {
      var shown = fixed(longEdge / shortEdge, 2);
      if (shown === "3.00") shown = fixed(longEdge / shortEdge, 4);
      problems.push("the long edge must be at most 3 times the short edge (got " + shown + ":1)");
    }
    var pixels = width * height;
    if (!(MIN_PIXELS <= pixels && pixels <= MAX_PIXELS)) {
      problems.push("the total pixels must be between " + grouped(MIN_PIXELS) + " and " + grouped(MAX_PIXELS) +
        " (got " + grouped(pixels) + ")");
    }
    return problems;
  }

  function officialTarget(width, height) {
    var longEdge = Math.max(width, height), shortEdge = Math.min(width, height);
    shortEdge = Math.max(shortEdge, longEdge / MAX_RATIO);
    if (longEdge > MAX_EDGE) {
      shortEdge *= MAX_EDGE / longEdge;
      longEdge = MAX_EDGE;
    }
    var pixels = longEdge * shortEdge;
    if (pixels > MAX_PIXELS || pixels < MIN_PIXELS) {
      var scale = Math.sqrt((pixels > MAX_PIXELS ? MAX_PIXELS : MIN_PIXELS) / pixels);
      longEdge *= scale;
      shortEdge *= scale;
    }
    return width >= height ? [longEdge, shortEdge] : [shortEdge, longEdge];
  }

  function gridAround(value, radius) {
    var lo = Math.max(STEP, (Math.floor(value / STEP) - radius + 1) * STEP);
    var hi = Math.min(MAX_EDGE, (Math.ceil(value / STEP) + radius - 1) * STEP);
    var out = [];
    for (var v = lo; v <= hi; v += STEP) out.push(v);
    return out;
  }

  function round12(x) { // Python's round(x, 12): the double nearest the decimal rounding
    return Number(x.toFixed(12));
  }

  function keyLess(a, b) { // Python tuple comparison
    for (var i = 0; i < a.length; i++) {
      if (a[i] < b[i]) return true;
      if (a[i] > b[i]) return false;
    }
    return false;
  }

  function nearestOfficial(width, height) {
    if (width <= 0 || height <= 0) throw new Error("width and height must be positive");
    var target = officialTarget(width, height);
    var logW = Math.log(width), logH = Math.log(height), logRatio = Math.log(width / height);
    for (var radius = 1; radius <= MAX_EDGE / STEP; radius++) {
      var best = null;
      var ws = gridAround(target[0], radius), hs = gridAround(target[1], radius);
      for (var i = 0; i < ws.length; i++) {
        for (var j = 0; j < hs.length; j++) {
          var w = ws[i], h = hs[j];
          if (officialProblems(w, h).length) continue;
          var dw = Math.log(w) - logW, dh = Math.log(h) - logH;
          var key = [round12(dw * dw + dh * dh), Math.abs(Math.log(w / h) - logRatio), -w * h,
            (h - w) * (width - height)];
          if (best === null || keyLess(key, best.key)) best = {key: key, size: [w, h]};
        }
      }
      if (best !== null) return best.size;
    }
    throw new Error("unreachable: the grid holds valid sizes");
  }

  /* null when the gateway accepts `size` on an official route, else its exact message. */
  function checkOfficialSize(size) {
    if (size === "auto") return null;
    var parsed = parseSize(size);
    if (parsed === null) {
      var hint = spellingHint(size);
      var dims = hint !== null ? parseSize(hint) : null;
      var tail;
      if (hint === "auto" || (dims !== null && officialProblems(dims[0], dims[1]).length === 0)) {
        tail = "; did you mean '" + hint + "'?";
      } else if (dims !== null) {
        tail = "; the nearest valid size is " + nearestOfficial(dims[0], dims[1]).join("x") + ".";
      } else {
        tail = ", e.g. " + EXAMPLES.map(function (s) { return "'" + s + "'"; }).join(", ") + ".";
      }
      return "Invalid size '" + show(size) + "'. Use 'auto' or WIDTHxHEIGHT with a lowercase x and no spaces" + tail;
    }
    var problems = officialProblems(parsed[0], parsed[1]);
    if (problems.length) {
      var near = nearestOfficial(parsed[0], parsed[1]);
      var text = problems.join("; ");
      return "Invalid size '" + size + "'. " + text.charAt(0).toUpperCase() + text.slice(1) +
        "; the nearest valid size is " + near[0] + "x" + near[1] + ".";
    }
    return null;
  }

  global.ImagerelaySizes = {
    parseSize: parseSize,
    officialProblems: officialProblems,
    nearestOfficial: nearestOfficial,
    checkOfficialSize: checkOfficialSize,
    EXAMPLES: EXAMPLES
  };
})(window);
