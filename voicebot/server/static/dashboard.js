// Live dashboard: opens /api/v1/realtime/dashboard with this page's ?token= (and ?call_id=),
// keeps the calls it hears of, and shows the selected call's transcript with agent and latency.
"use strict";

const params = new URLSearchParams(location.search);
const calls = new Map(); // call_id -> call view
let selected = params.get("call_id");

function callView(id) {
  if (!calls.has(id)) {
    calls.set(id, { id, worker: "", agent: null, startedAt: null, ended: null,
                    entries: [], utterances: new Map() });
  }
  return calls.get(id);
}

function apply(event) {
  const call = callView(event.call_id);
  switch (event.type) {
    case "call_started":
      call.worker = event.worker; call.startedAt = event.at; call.ended = null;
      break;
    case "call_ended":
      call.ended = event.outcome;
      call.entries.push({ kind: "note", cls: "end", text: `call ended: ${event.outcome}` });
      break;
    case "transcript": {
      if (event.agent) call.agent = event.agent;
      let entry = call.utterances.get(event.utterance);
      if (!entry) {
        entry = { kind: "line" };
        call.utterances.set(event.utterance, entry);
        call.entries.push(entry);
      }
      Object.assign(entry, { role: event.role, text: event.text, final: event.final,
                             agent: event.agent });
      break;
    }
    case "turn_latency":
      call.entries.push({ kind: "latency", turn: event.turn, total: event.voice_to_voice_ms,
                          stages: event.stages_ms });
      break;
    case "handoff":
      call.agent = event.to_agent;
      call.entries.push({ kind: "note", cls: "handoff",
                          text: `handoff ${event.from_agent} → ${event.to_agent}` });
      break;
    case "tool_call":
      call.entries.push({ kind: "note", cls: "tool", text: `${event.agent} called ${event.tool}` });
      break;
    case "error":
      call.entries.push({ kind: "note", cls: "error",
                          text: `error (${event.source}): ${event.message}` });
      break;
  }
  if (!call.worker && event.worker) call.worker = event.worker;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function render() {
  const list = document.getElementById("calls");
  list.replaceChildren();
  if (!selected && calls.size) selected = [...calls.keys()].at(-1);
  for (const call of calls.values()) {
    const item = el("li", call.id === selected ? "selected" : "");
    if (call.ended) item.classList.add("ended");
    item.dataset.callId = call.id;
    item.append(el("div", "call-id", call.id));
    const meta = el("div", "meta");
    if (call.agent) meta.append(el("span", "agent", call.agent), " ");
    meta.append(call.ended ? `ended (${call.ended})` : `live on ${call.worker}`);
    item.append(meta);
    item.onclick = () => { selected = call.id; render(); };
    list.append(item);
  }
  document.getElementById("no-calls").hidden = calls.size > 0;

  const transcript = document.getElementById("transcript");
  transcript.replaceChildren();
  const call = selected && calls.get(selected);
  const title = document.getElementById("call-title");
  title.replaceChildren("Transcript");
  if (call) title.append(" · ", el("span", "call-id", call.id));
  if (!call) { transcript.append(el("div", "empty", "Select a call.")); return; }
  for (const entry of call.entries) {
    if (entry.kind === "line") {
      const line = el("div", `line ${entry.role}${entry.final ? "" : " interim"}`);
      const who = el("div", "who", entry.role === "user" ? "caller" : "bot");
      if (entry.agent) who.append(" · ", el("span", "agent", entry.agent));
      line.append(who, el("div", "text", entry.text));
      transcript.append(line);
    } else if (entry.kind === "latency") {
      const stages = Object.entries(entry.stages)
        .map(([name, ms]) => `${name} ${Math.round(ms)}`).join(" · ");
      const row = el("div", "latency");
      row.append(`turn ${entry.turn}: `, el("b", "", `${Math.round(entry.total)} ms`),
                 ` voice-to-voice (${stages})`);
      transcript.append(row);
    } else {
      transcript.append(el("div", `note ${entry.cls}`, entry.text));
    }
  }
}

function connect() {
  const query = new URLSearchParams();
  if (params.get("token")) query.set("token", params.get("token"));
  if (params.get("call_id")) query.set("call_id", params.get("call_id"));
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/api/v1/realtime/dashboard?${query}`);
  const status = document.getElementById("status");
  ws.onopen = () => { status.textContent = "live"; status.className = "live"; };
  ws.onclose = (e) => {
    status.textContent = `disconnected (${e.code}${e.reason ? ": " + e.reason : ""})`;
    status.className = "closed";
    if (e.code !== 1008) setTimeout(connect, 2000);
  };
  ws.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (data.type === "hello") {
      document.getElementById("worker").textContent = `worker ${data.worker}`;
    } else if (data.type === "snapshot") {
      for (const call of data.calls) {
        const view = callView(call.call_id);
        view.worker = call.worker; view.agent = call.agent; view.startedAt = call.started_at;
        view.entries = []; view.utterances = new Map();
        for (const event of call.events) apply(event);
      }
    } else {
      apply(data);
    }
    render();
  };
}

render();
connect();
