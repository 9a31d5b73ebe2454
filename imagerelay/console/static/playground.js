/* The playground: builds a form from what GET /v1/models publishes for the chosen key, then
 * calls the public API with that key, like the SDK. Non-streaming calls go through the async
 * jobs API (a 202 at once, then polls: no connection stays silent long enough for a proxy
 * to cut it); streaming calls read the SSE answer with fetch + ReadableStream and show each
 * partial image as it arrives. Plain script, no build step; needs sizes.js first. */
(function () {
  "use strict";

  var root = document.getElementById("playground");
  if (!root) return;

  var API = root.dataset.apiBase.replace(/\/$/, "");
  var TEST_KEY_URL = root.dataset.testKeyUrl;
  var CSRF = root.dataset.csrf;
  var SESSION_KEY_NAME = root.dataset.testKeyName;  // the name this session's test keys carry
  var KEY_STORE = "imagerelay.key.";          // + token id: keys the console showed this tab
  var TEST_STORE = "imagerelay.testkey.";     // + group: this session's test key
  var COMMON_SIZES = ["auto", "1024x1024", "1536x1024", "1024x1536", "2048x2048", "2048x1152", "1152x2048",
    "3840x2160", "2160x3840"];
  var PARAMS = ["quality", "background", "output_format", "moderation"];
  var POLL_MS = [500, 1000, 1000, 2000];

  var $ = function (id) { return document.getElementById(id); };
  var el = {
    key: $("pg-key"), keyStatus: $("pg-key-status"), pasteField: $("pg-paste-field"), paste: $("pg-paste"),
model: $("pg-model"), route: $("pg-route"), form: $("pg-form"),
    modeGen: $("pg-mode-generate"), modeEdit: $("pg-mode-edit"), modeEditLabel: $("pg-mode-edit-label"),
    prompt: $("pg-prompt"), editFields: $("pg-edit-fields"), images: $("pg-images"), imagesHint: $("pg-images-hint"),
    imagePreviews: $("pg-image-previews"), mask: $("pg-mask"), maskPreview: $("pg-mask-preview"),
    fidelityField: $("pg-fidelity-field"), fidelity: $("pg-input_fidelity"),
    sizeField: $("pg-size-field"), size: $("pg-size"), sizeHint: $("pg-size-hint"), customField: $("pg-custom-field"),
    custom: $("pg-custom"), sizeFixed: $("pg-size-fixed"), sizeError: $("pg-size-error"),
    compressionField: $("pg-output_compression-field"), compression: $("pg-output_compression"),
    nField: $("pg-n-field"), n: $("pg-n"), partialField: $("pg-partial_images-field"), partial: $("pg-partial_images"),
    submit: $("pg-submit"), cancel: $("pg-cancel"), error: $("pg-error"),
    output: $("pg-output"), progress: $("pg-progress"), partialsWrap: $("pg-partials-wrap"), partials: $("pg-partials"),
    results: $("pg-results"), cost: $("pg-cost"), codeSection: $("pg-code-section"), curl: $("pg-curl"),
    python: $("pg-python"), copyStatus: $("pg-copy-status")
  };

  var state = {key: null, models: [], caps: null, model: null, busy: false, abort: null, jobId: null, urls: []};

  // -- small helpers -------------------------------------------------------------------------

  function show(node, on) { node.hidden = !on; }

  function store() {
    try { return window.sessionStorage; } catch (e) { return null; }
  }

  function remember(name, value) {
    var s = store();
    if (s) s.setItem(name, typeof value === "string" ? value : JSON.stringify(value));
  }

  function recall(name) {
    var s = store();
    return s ? s.getItem(name) : null;
  }

  function setOptions(select, values, labels) {
    select.textContent = "";
    values.forEach(function (v, i) {
      var o = document.createElement("option");
      o.value = v;
      o.textContent = labels ? labels[i] : v;
      select.appendChild(o);
    });
  }

  function api(path, options) {
    options = options || {};
    var headers = Object.assign({"Authorization": "Bearer " + state.key}, options.headers || {});
    return fetch(API + path, Object.assign({}, options, {headers: headers, cache: "no-store"}));
  }

  async function errorOf(response) {
    var text = await response.text();
    try {
      var body = JSON.parse(text);
      if (body && body.error) return body.error;
    } catch (e) { /* not JSON: fall through */ }
    return {message: "The gateway answered " + response.status + (text ? ": " + text.slice(0, 300) : "."),
      param: null};
  }

  function elapsed(start) {
    var s = Math.floor((Date.now() - start) / 1000);
    return s < 60 ? s + " s" : Math.floor(s / 60) + " min " + (s % 60) + " s";
  }

  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

  // -- the key -------------------------------------------------------------------------------

  async function chooseKey() {
    var value = el.key.value;
    state.key = null;
    show(el.pasteField, false);
    resetModels("Choose a key first");
    if (!value) return;
    if (value.indexOf("test:") === 0) {
      var group = value.slice(5);
      var kept = JSON.parse(recall(TEST_STORE + group) || "null");
      // Only this session's own key: another account signed in on this tab earlier never lends its key.
      if (kept && kept.name === SESSION_KEY_NAME && kept.expires_at * 1000 > Date.now() &&
          await useKey(kept.key, "Using this session's test key for " + group + " (" + kept.hint + ").")) {
        return;
      }
      var s = store();
      if (s) s.removeItem(TEST_STORE + group);  // expired, or revoked by a sign-out: mint another
      el.keyStatus.textContent = "Creating a test key for " + group + "…";
      var r = await fetch(TEST_KEY_URL, {method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": CSRF}, body: JSON.stringify({group: group})});
      if (!r.ok) {
        el.keyStatus.textContent = (await errorOf(r)).message;
        return;
      }
      var made = await r.json();
      remember(TEST_STORE + group, made);
      remember(KEY_STORE + made.id, made.key);
      useKey(made.key, "Using a new session test key for " + group + " (" + made.hint + "); it stops working when you sign out.");
      return;
    }
    var id = value.slice(6);
    var known = recall(KEY_STORE + id);
    if (known && await useKey(known, "Using the key this browser kept for this token.")) return;
    var s2 = store();
    if (s2) s2.removeItem(KEY_STORE + id);
    show(el.pasteField, true);
    if (!known) el.keyStatus.textContent = "The server keeps only this token's hint: paste its key to use it.";
    el.paste.focus();
  }

  async function usePasted() {
    var key = el.paste.value.trim();
    if (!key) { el.paste.focus(); return; }
    el.paste.value = "";
    show(el.pasteField, false);
    if (await useKey(key, "Using the pasted key (kept in this tab only).")) {
      remember(KEY_STORE + el.key.value.slice(6), key);
    } else {
      show(el.pasteField, true);
      el.paste.focus();
    }
  }

  async function useKey(key, message) {
    state.key = key;
    el.keyStatus.textContent = message;
    var r = await api("/models");
    if (!r.ok) {
      var err = await errorOf(r);
      el.keyStatus.textContent = "This key was refused: " + err.message;
      state.key = null;
      return false;
    }
    state.models = (await r.json()).data.filter(function (m) { return m.imagerelay; });
    if (!state.models.length) {
      resetModels("This key may call no image model");
      return true;
    }
    setOptions(el.model, state.models.map(function (m) { return m.id; }));
    el.model.disabled = false;
    chooseModel();
    return true;
  }

  function resetModels(label) {
    setOptions(el.model, [""], [label]);
    el.model.disabled = true;
    show(el.route, false);
    show(el.form, false);
    state.caps = null;
  }

  // -- the form, from the route's capabilities ------------------------------------------------

  function chooseModel() {
    var model = state.models.filter(function (m) { return m.id === el.model.value; })[0];
    if (!model) return;
    // A result belongs to the model that made it: another model starts from an empty screen
    // (a call still running for the previous one is canceled, so its answer cannot land here).
    if (state.busy) cancel();
    clearResult();
    show(el.output, false);
    state.model = model.id;
    var caps = state.caps = model.imagerelay;
    el.route.textContent = caps.group + " · " + caps.route + ": " + caps.description + " · " + priceText(caps.billing);
    show(el.route, true);

    var canEdit = caps.endpoints.indexOf("edits") >= 0;
    show(el.modeEditLabel, canEdit);
    if (!canEdit) el.modeGen.checked = true;
    el.imagesHint.textContent = "Up to " + caps.edits.max_images + " images, " +
      Math.round(caps.edits.max_image_bytes / 1048576) + " MB each.";
    show(el.fidelityField, !!caps.input_fidelity);

    buildSize(caps.size);
    PARAMS.forEach(function (name) {
      var values = caps[name];
      show($("pg-" + name + "-field"), !!values);
      if (values) setOptions($("pg-" + name), [""].concat(values), ["default"].concat(values));
    });
    show(el.compressionField, !!caps.output_compression);
    show(el.nField, caps.n.max > 1);
    el.n.max = String(caps.n.max);
    el.n.value = "1";
    var streams = caps.streaming.supported && caps.streaming.partial_images_max > 0;
    show(el.partialField, streams);
    if (streams) {
      var counts = [];
      for (var i = 0; i <= caps.streaming.partial_images_max; i++) counts.push(String(i));
      setOptions(el.partial, counts, counts.map(function (c) { return c === "0" ? "0 (no streaming)" : c; }));
    }
    clearErrors();
    show(el.form, true);
    changeMode();
    renderCode();
  }

  function priceText(billing) {
    if (billing.mode === "per_call") return "$" + trimUsd(billing.price_per_call_usd) + " per call";
    return "official usage prices \u00d7" + billing.multiplier;
  }

  function trimUsd(text) {
    var parts = String(text).split(".");
    var frac = (parts[1] || "").replace(/0+$/, "");
    while (frac.length < 2) frac += "0";
    return parts[0] + "." + frac;
  }

  function buildSize(rules) {
    show(el.sizeFixed, rules.mode === "fixed");
    show(el.sizeField, rules.mode !== "fixed");
    show(el.customField, false);
    el.size.textContent = "";
    if (rules.mode === "fixed") {
      el.sizeFixed.textContent = "This route takes no size (or quality): it always answers " + rules.default + ".";
      return;
    }
    if (rules.mode === "table") {
      var count = 0;
      Object.keys(rules.table).forEach(function (ratio) {
        var group = document.createElement("optgroup");
        group.label = ratio;
        Object.keys(rules.table[ratio]).forEach(function (tier) {
          var o = document.createElement("option");
          o.value = rules.table[ratio][tier];
          o.textContent = ratio + " · " + tier + " · " + o.value.replace("x", " \u00d7 ");
          if (o.value === rules.default) o.selected = true;
          group.appendChild(o);
          count++;
        });
        el.size.appendChild(group);
      });
      el.sizeHint.textContent = count + " sizes, by ratio and 1K/2K/4K; default " + rules.default + ".";
      return;
    }
    var common = COMMON_SIZES.concat(rules.examples).filter(function (s, i, all) {
      return all.indexOf(s) === i && (s === "auto" || !ImagerelaySizes.checkOfficialSize(s));
    });
    setOptions(el.size, common.concat(["custom"]), common.map(function (s) {
      return s === "auto" ? "auto (the model picks)" : s.replace("x", " \u00d7 ");
    }).concat(["Custom…"]));
    el.size.value = rules.default;
    el.sizeHint.textContent = "Any WIDTHxHEIGHT: edges multiples of " + rules.multiple_of + ", at most " +
      rules.max_edge + ", ratio up to " + rules.max_aspect_ratio + ":1, " + rules.min_pixels.toLocaleString("en-US") +
      "–" + rules.max_pixels.toLocaleString("en-US") + " pixels.";
  }

  function sizeChanged() {
    var custom = el.size.value === "custom";
    show(el.customField, custom);
    if (custom) el.custom.focus();
    checkCustom();
    renderCode();
  }

  function checkCustom() {
    var problem = null;
    if (el.size.value === "custom" && el.custom.value !== "") problem = ImagerelaySizes.checkOfficialSize(el.custom.value);
    fieldError("size", problem);
    el.custom.setAttribute("aria-invalid", problem ? "true" : "false");
    return !problem;
  }

  function changeMode() {
    var edit = el.modeEdit.checked;
    show(el.editFields, edit);
    el.submit.textContent = edit ? "Edit" : "Generate";
    renderCode();
  }

  function previews(input, list) {
    list.textContent = "";
    Array.prototype.forEach.call(input.files, function (file) {
      var li = document.createElement("li");
      var img = document.createElement("img");
      img.src = URL.createObjectURL(file);
      img.alt = "Preview of " + file.name;
      var cap = document.createElement("span");
      cap.textContent = file.name + " (" + Math.ceil(file.size / 1024) + " KB)";
      li.appendChild(img);
      li.appendChild(cap);
      list.appendChild(li);
    });
    renderCode();
  }

  // -- the request ------------------------------------------------------------------------------

  function sizeValue() {
    var rules = state.caps.size;
    if (rules.mode === "fixed") return null;
    var v = el.size.value === "custom" ? el.custom.value.trim() : el.size.value;
    if (rules.mode === "rules" && v === "auto" && rules.default === "auto") return null;  // the default anyway
    return v || null;
  }

  /* The request's fields, in a fixed order, only those the user set (route defaults apply). */
  function fields() {
    var caps = state.caps;
    var out = [["model", state.model], ["prompt", el.prompt.value]];
    var size = sizeValue();
    if (size) out.push(["size", size]);
    PARAMS.forEach(function (name) {
      if (caps[name] && $("pg-" + name).value) out.push([name, $("pg-" + name).value]);
    });
    if (caps.output_compression && el.compression.value !== "") out.push(["output_compression", Number(el.compression.value)]);
    if (caps.n.max > 1 && el.n.value && el.n.value !== "1") out.push(["n", Number(el.n.value)]);
    if (isEdit() && caps.input_fidelity && el.fidelity.value) out.push(["input_fidelity", el.fidelity.value]);
    var partials = streaming() ? Number(el.partial.value) : 0;
    if (partials) out.push(["stream", true], ["partial_images", partials]);
    return out;
  }

  function isEdit() { return el.modeEdit.checked && !el.editFields.hidden; }

  function streaming() {
    return !!state.caps && !el.partialField.hidden && Number(el.partial.value) > 0;
  }

  function endpoint() { return isEdit() ? "edits" : "generations"; }

  function jsonBody(extra) {
    var body = {};
    (extra || []).concat(fields()).forEach(function (kv) { body[kv[0]] = kv[1]; });
    return body;
  }

  function multipartBody(extra) {
    var form = new FormData();
    (extra || []).concat(fields()).forEach(function (kv) { form.append(kv[0], String(kv[1])); });
    Array.prototype.forEach.call(el.images.files, function (f) { form.append("image[]", f, f.name); });
    if (el.mask.files.length) form.append("mask", el.mask.files[0], el.mask.files[0].name);
    return form;
  }

  function request(extra) {
    if (isEdit()) return {body: multipartBody(extra), headers: {}};
    return {body: JSON.stringify(jsonBody(extra)), headers: {"Content-Type": "application/json"}};
  }

  // -- errors -----------------------------------------------------------------------------------

  function fieldError(param, message) {
    var node = $("pg-" + param + "-error");
    if (!node) return false;
    node.textContent = message || "";
    show(node, !!message);
    var input = param === "size" ? (el.size.value === "custom" ? el.custom : el.size) : $("pg-" + param);
    if (input) input.setAttribute("aria-invalid", message ? "true" : "false");
    return true;
  }

  function clearErrors() {
    ["prompt", "image", "mask", "size", "quality", "background", "output_format", "output_compression", "n",
      "moderation", "partial_images"].forEach(function (p) { fieldError(p, null); });
    el.error.textContent = "";
    show(el.error, false);
  }

  /* The gateway's own message: next to the field it names, and in the alert above the result. */
  function refused(err) {
    var param = err.param ? (/^image/.test(err.param) ? "image" : err.param) : null;  // image[1] -> the images field
    if (param) fieldError(param, err.message);
    el.error.textContent = (err.code ? err.code + ": " : "") + err.message;
    show(el.error, true);
    setProgress("Refused by the gateway.");
  }

  // -- running a call ---------------------------------------------------------------------------

  function setProgress(text) { el.progress.textContent = text; }

  function begin() {
    state.busy = true;
    el.submit.disabled = true;
    show(el.cancel, true);
    clearErrors();
    clearResult();
    show(el.output, true);
  }

  /* The images, partials and cost of the last call (its object URLs freed). */
  function clearResult() {
    state.urls.forEach(function (u) { URL.revokeObjectURL(u); });
    state.urls = [];
    el.results.textContent = "";
    el.partials.textContent = "";
    show(el.partialsWrap, false);
    el.cost.textContent = "";
    delete el.cost.dataset.costMicros;
    setProgress("");
  }

  function end() {
    state.busy = false;
    state.abort = null;
    state.jobId = null;
    el.submit.disabled = false;
    show(el.cancel, false);
  }

  async function run(event) {
    event.preventDefault();
    if (state.busy || !state.caps) return;
    if (!el.prompt.value.trim()) { fieldError("prompt", "Write a prompt first."); el.prompt.focus(); return; }
    if (!checkCustom()) { el.custom.focus(); return; }
    if (isEdit() && !el.images.files.length) { fieldError("image", "Choose at least one image to edit."); el.images.focus(); return; }
    renderCode();
    begin();
    var start = Date.now();
    var ticker = setInterval(function () { tick(start); }, 1000);
    state.phase = streaming() ? "Streaming" : "Submitting";
    tick(start);
    try {
      var requestId = streaming() ? await runStream(start) : await runJob(start);
      if (requestId) showCost(requestId);
    } catch (e) {
      if (e && e.name === "AbortError") setProgress("Canceled after " + elapsed(start) + ".");
      else refused({message: "The call did not complete: " + (e && e.message ? e.message : e)});
    } finally {
      clearInterval(ticker);
      end();
    }
  }

  function tick(start) {
    if (state.busy) setProgress(state.phase + "… " + elapsed(start));
  }

  async function runJob(start) {
    var req = request([["endpoint", endpoint()]]);
    state.abort = new AbortController();
    var r = await api("/images/jobs", {method: "POST", body: req.body, headers: req.headers, signal: state.abort.signal});
    if (r.status !== 202) { refused(await errorOf(r)); return null; }
    var requestId = r.headers.get("x-request-id");
    var job = await r.json();
    state.jobId = job.id;
    for (var i = 0; ; i++) {
      state.phase = job.status === "queued" ? "Queued (job " + job.id + ")" : "Running (job " + job.id + ")";
      tick(start);
      if (job.status === "succeeded" || job.status === "failed" || job.status === "canceled") break;
      await sleep(POLL_MS[Math.min(i, POLL_MS.length - 1)]);
      var poll = await pollJob(job.id);
      if (!poll.ok) { refused(await errorOf(poll)); return requestId; }
      job = await poll.json();
    }
    state.busy = false;
    if (job.status === "succeeded") {
      setProgress("Done in " + elapsed(start) + ".");
      showImages(job.result.data, job.result, requestId);
    } else if (job.status === "failed") {
      refused(job.error || {message: "The job failed."});
    } else {
      setProgress("Canceled after " + elapsed(start) + ".");
    }
    return requestId;
  }

  /* One poll; a dropped connection (a proxy closing an idle keep-alive socket, a network
   * blip) is retried a few times: the job runs on regardless, so only the view was lost. */
  async function pollJob(id) {
    for (var attempt = 0; ; attempt++) {
      try {
        var r = await api("/images/jobs/" + encodeURIComponent(id) + "?include=b64_json", {signal: state.abort.signal});
        if (r.status < 502 || attempt >= 4) return r;  // 502-504 from a proxy: try again too
      } catch (e) {
        if ((e && e.name === "AbortError") || attempt >= 4) throw e;
      }
      await sleep(1000 * (attempt + 1));
    }
  }

  async function runStream(start) {
    var req = request();
    state.abort = new AbortController();
    var r = await api("/images/" + endpoint(), {method: "POST", body: req.body, headers: req.headers,
      signal: state.abort.signal});
    if (!r.ok || (r.headers.get("content-type") || "").indexOf("text/event-stream") < 0) {
      refused(r.ok ? {message: "Expected a stream, got " + r.headers.get("content-type")} : await errorOf(r));
      return null;
    }
    var requestId = r.headers.get("x-request-id");
    state.phase = "Waiting for the first partial image";
    var reader = r.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    var finals = [];
    for (;;) {
      var chunk = await reader.read();
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, {stream: true}).replace(/\r\n/g, "\n");
      var cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        var block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        var data = block.split("\n").filter(function (l) { return l.indexOf("data:") === 0; })
          .map(function (l) { return l.slice(5).replace(/^ /, ""); }).join("\n");
        if (!data || data === "[DONE]") continue;
        var event;
        try { event = JSON.parse(data); } catch (e) { continue; }
        if (event.type && /partial_image$/.test(event.type)) {
          addPartial(event);
          state.phase = "Partial image " + ((event.partial_image_index || 0) + 1) + " received; still working";
          tick(start);
        } else if (event.type && /completed$/.test(event.type)) {
          finals.push(event);
        } else if (event.type === "error" || event.error) {
          refused(event.error || event);
          return requestId;
        }
      }
    }
    state.busy = false;
    if (!finals.length) { refused({message: "The stream ended without an image."}); return requestId; }
    setProgress("Done in " + elapsed(start) + ".");
    showImages(finals, {usage: finals[finals.length - 1].usage}, requestId);
    return requestId;
  }

  async function cancel() {
    if (state.jobId) {
      try { await api("/images/jobs/" + encodeURIComponent(state.jobId), {method: "DELETE"}); } catch (e) { /* shown below */ }
    }
    if (state.abort) state.abort.abort();
  }

  // -- results ------------------------------------------------------------------------------------

  function blobUrl(b64, mime) {
    var bytes = atob(b64);
    var array = new Uint8Array(bytes.length);
    for (var i = 0; i < bytes.length; i++) array[i] = bytes.charCodeAt(i);
    var url = URL.createObjectURL(new Blob([array], {type: mime}));
    state.urls.push(url);
    return url;
  }

  function mimeOf(format) {
    return {jpeg: "image/jpeg", jpg: "image/jpeg", webp: "image/webp"}[format] || "image/png";
  }

  function addPartial(event) {
    show(el.partialsWrap, true);
    var li = document.createElement("li");
    var img = document.createElement("img");
    img.className = "pg-partial";
    img.alt = "Partial image " + ((event.partial_image_index || 0) + 1);
    img.src = blobUrl(event.b64_json, mimeOf(event.output_format));
    li.appendChild(img);
    el.partials.appendChild(li);
  }

  function showImages(items, meta, requestId) {
    var format = (meta && meta.output_format) || (items[0] && items[0].output_format) || "png";
    items.forEach(function (item, i) {
      var fig = document.createElement("figure");
      fig.className = "pg-result";
      var scroll = document.createElement("div");
      scroll.className = "pg-natural";
      scroll.tabIndex = 0;
      scroll.setAttribute("role", "group");
      scroll.setAttribute("aria-label", "Image " + (i + 1) + " at its natural size (scroll to see all of it)");
      var img = document.createElement("img");
      img.className = "pg-image";
      img.alt = "Result " + (i + 1) + (item.revised_prompt ? ": " + item.revised_prompt : "");
      var src = item.b64_json ? blobUrl(item.b64_json, mimeOf(item.output_format || format)) : item.url;
      var cap = document.createElement("figcaption");
      var dims = document.createElement("span");
      dims.className = "pg-dims";
      dims.textContent = "Loading…";
      var link = document.createElement("a");
      link.href = src;
      link.className = "button";
      link.download = (requestId || "imagerelay") + "-" + (i + 1) + "." + (item.output_format || format);
      link.textContent = "Download image " + (i + 1);
      img.addEventListener("load", function () {
        dims.textContent = img.naturalWidth + " \u00d7 " + img.naturalHeight + " px";
        img.dataset.natural = img.naturalWidth + "x" + img.naturalHeight;
      });
      img.src = src;
      scroll.appendChild(img);
      cap.appendChild(dims);
      cap.appendChild(document.createTextNode(" "));
      cap.appendChild(link);
      fig.appendChild(scroll);
      fig.appendChild(cap);
      el.results.appendChild(fig);
    });
  }

  /* The call's cost, from its usage record (written as the call settles: look a few times). */
  async function showCost(requestId) {
    el.cost.textContent = "Looking up the cost of " + requestId + "…";
    for (var i = 0; i < 20; i++) {
      var r = await api("/account/usage?request_id=" + encodeURIComponent(requestId));
      if (r.ok) {
        var records = (await r.json()).data;
        if (records.length) {
          var total = records.reduce(function (sum, rec) { return sum + rec.cost_micros; }, 0);
          var rec = records[0];
          var detail = rec.billing_mode === "usage"
            ? " (usage billing: " + rec.usage.input_text_tokens + " text + " + rec.usage.input_image_tokens +
              " image input tokens, " + rec.usage.output_tokens + " output tokens)"
            : " (per call)";
          el.cost.textContent = "Cost: $" + trimUsd((total / 1e6).toFixed(6)) + detail + " · request " + requestId +
            " · status " + rec.status + ".";
          el.cost.dataset.costMicros = String(total);
          return;
        }
      }
      await sleep(500);
    }
    el.cost.textContent = "No usage record for " + requestId + " yet; see the usage page.";
  }

  // -- equivalent code ----------------------------------------------------------------------------

  function shellQuote(s) { return "'" + String(s).replace(/'/g, "'\\''") + "'"; }

  function pyValue(v) {
    if (v === true) return "True";
    if (v === false) return "False";
    return typeof v === "number" ? String(v) : JSON.stringify(v);
  }

  function renderCode() {
    if (!state.caps) return;
    show(el.codeSection, true);
    var base = location.origin + API;
    var key = state.key || "$IMAGERELAY_API_KEY";
    var f = fields();
    var stream = streaming();
    var lines;
    var names = Array.prototype.map.call(el.images.files, function (x) { return x.name; });
    if (isEdit() && !names.length) names = ["image.png"];
    var maskName = el.mask.files.length ? el.mask.files[0].name : null;
    if (isEdit()) {
      lines = ["curl " + shellQuote(base + "/images/edits") + (stream ? " -N" : "") + " \\",
        "  -H " + shellQuote("Authorization: Bearer " + key) + " \\"];
      if (!stream) lines.push("  -H 'X-Imagerelay-Keepalive: 15' \\");
      // --form-string: a prompt starting with @ or < is text, never a file to upload.
      f.forEach(function (kv) { lines.push("  --form-string " + shellQuote(kv[0] + "=" + kv[1]) + " \\"); });
      names.forEach(function (n) { lines.push("  -F " + shellQuote("image[]=@" + n) + " \\"); });
      if (maskName) lines.push("  -F " + shellQuote("mask=@" + maskName) + " \\");
    } else {
      lines = ["curl " + shellQuote(base + "/images/generations") + (stream ? " -N" : "") + " \\",
        "  -H " + shellQuote("Authorization: Bearer " + key) + " \\",
        "  -H 'Content-Type: application/json' \\"];
      if (!stream) lines.push("  -H 'X-Imagerelay-Keepalive: 15' \\");
      lines.push("  -d " + shellQuote(JSON.stringify(jsonBody())) + (stream ? "" : " \\"));
    }
    if (!stream) lines.push("  -o response.json");
    else if (isEdit()) lines[lines.length - 1] = lines[lines.length - 1].replace(/ \\$/, "");
    el.curl.textContent = lines.join("\n");

    var py = ["import base64", "", "from openai import OpenAI", "",
      "client = OpenAI(base_url=" + JSON.stringify(base) + ", api_key=" + JSON.stringify(key) + ")"];
    var call = isEdit() ? "client.images.edit(" : "client.images.generate(";
    var args = f.map(function (kv) { return "    " + kv[0] + "=" + pyValue(kv[1]) + ","; });
    if (isEdit()) {
      args.push("    image=[" + names.map(function (n) { return "open(" + JSON.stringify(n) + ", \"rb\")"; }).join(", ") + "],");
      if (maskName) args.push("    mask=open(" + JSON.stringify(maskName) + ", \"rb\"),");
    }
    if (!stream) args.push("    extra_headers={\"X-Imagerelay-Keepalive\": \"15\"},  # survives proxy idle timeouts");
    var ext = (f.filter(function (kv) { return kv[0] === "output_format"; })[0] || [0, "png"])[1];
    if (stream) {
      py.push("", "stream = " + call);
      py = py.concat(args, [")", "for event in stream:",
        "    name = f\"partial-{event.partial_image_index}\" if event.type.endswith(\"partial_image\") else \"result\"",
        "    with open(f\"{name}." + ext + "\", \"wb\") as out:",
        "        out.write(base64.b64decode(event.b64_json))"]);
    } else {
      py.push("", "result = " + call);
      py = py.concat(args, [")", "for i, image in enumerate(result.data, 1):",
        "    with open(f\"image-{i}." + ext + "\", \"wb\") as out:",
        "        out.write(base64.b64decode(image.b64_json))"]);
    }
    el.python.textContent = py.join("\n");
  }

  function copy(event) {
    var target = $(event.currentTarget.dataset.copy);
    var done = function () { el.copyStatus.textContent = "Copied."; };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(target.textContent).then(done, function () {
        el.copyStatus.textContent = "Copy failed: select the text and copy it.";
      });
    } else {
      var range = document.createRange();
      range.selectNodeContents(target);
      var sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      el.copyStatus.textContent = "Selected: press Ctrl+C to copy.";
    }
  }

  // -- wiring -------------------------------------------------------------------------------------

  el.key.addEventListener("change", chooseKey);
  el.pasteField.addEventListener("submit", function (e) { e.preventDefault(); usePasted(); });
  el.model.addEventListener("change", chooseModel);
  el.modeGen.addEventListener("change", changeMode);
  el.modeEdit.addEventListener("change", changeMode);
  el.size.addEventListener("change", sizeChanged);
  el.custom.addEventListener("input", function () { checkCustom(); renderCode(); });
  el.images.addEventListener("change", function () { previews(el.images, el.imagePreviews); fieldError("image", null); });
  el.mask.addEventListener("change", function () { previews(el.mask, el.maskPreview); });
  el.form.addEventListener("input", renderCode);
  el.form.addEventListener("change", renderCode);
  el.form.addEventListener("submit", run);
  el.cancel.addEventListener("click", cancel);
  Array.prototype.forEach.call(document.querySelectorAll(".pg-copy"), function (b) { b.addEventListener("click", copy); });
  var wanted = new URLSearchParams(location.search).get("token");  // from a token's page
  if (wanted && el.key.querySelector('option[value="token:' + wanted.replace(/\D/g, "") + '"]')) {
    el.key.value = "token:" + wanted.replace(/\D/g, "");
  }
  if (el.key.value) chooseKey();
})();
