// Browser conversation: microphone → PCM16 over /api/v1/realtime/conversation → the bot's PCM16
// played back in order; transcripts, agent and latency from the JSON events.
"use strict";

const RATE = 16000; // announced in the start message; 16000 or 24000 (transports/browser.yaml)
const button = document.getElementById("talk");
const statusText = document.getElementById("status");
const transcript = document.getElementById("transcript");
const lines = new Map(); // utterance number -> line element
let ws = null;
let resumable = null; // the session id of a conversation whose socket dropped before it ended
let audio = null; // { context, stream, node, playHead, sources }

function setStatus(text) { statusText.textContent = text; }

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showTranscript(event) {
  let line = lines.get(event.utterance);
  if (!line) {
    line = el("div", `line ${event.role}`);
    line.dataset.role = event.role;
    line.append(el("div", "who"), el("div", "text"));
    lines.set(event.utterance, line);
    transcript.append(line);
  }
  line.classList.toggle("interim", !event.final);
  const who = line.querySelector(".who");
  who.replaceChildren(event.role === "user" ? "you" : "bot");
  if (event.agent) {
    who.append(" · ", el("span", "agent", event.agent));
    document.getElementById("agent").textContent = event.agent;
  }
  line.querySelector(".text").textContent = event.text;
}

function play(buffer) {
  const samples = new Int16Array(buffer);
  const floats = new Float32Array(samples.length);
  for (let i = 0; i < samples.length; i++) floats[i] = samples[i] / 0x8000;
  const chunk = audio.context.createBuffer(1, floats.length, RATE);
  chunk.copyToChannel(floats, 0);
  const source = audio.context.createBufferSource();
  source.buffer = chunk;
  source.connect(audio.context.destination);
  const at = Math.max(audio.context.currentTime + 0.05, audio.playHead);
  source.start(at);
  audio.playHead = at + chunk.duration;
  const played = Number(document.body.dataset.botAudioMs || 0) + chunk.duration * 1000;
  document.body.dataset.botAudioMs = String(Math.round(played)); // what tests check
  audio.sources.add(source);
  source.onended = () => audio && audio.sources.delete(source);
}

function flushPlayback() { // barge-in: drop what the bot has not said yet
  for (const source of audio.sources) { try { source.stop(); } catch (e) { /* ended */ } }
  audio.sources.clear();
  audio.playHead = 0;
}

async function start() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
  });
  const context = new AudioContext({ sampleRate: RATE });
  await context.audioWorklet.addModule("/static/pcm-capture.js");
  const node = new AudioWorkletNode(context, "pcm-capture", {
    processorOptions: { targetRate: RATE },
  });
  context.createMediaStreamSource(stream).connect(node);
  audio = { context, stream, node, playHead: 0, sources: new Set() };

  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = resumable ? `?session_id=${encodeURIComponent(resumable)}` : "";
  ws = new WebSocket(`${scheme}//${location.host}/api/v1/realtime/conversation${query}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send(JSON.stringify({ type: "start", sample_rate: RATE }));
  ws.onmessage = (message) => {
    if (message.data instanceof ArrayBuffer) { play(message.data); return; }
    const event = JSON.parse(message.data);
    if (event.type === "session") {
      resumable = event.session_id;
      const resumed = event.resumed ? " (resumed)" : "";
      document.getElementById("session").textContent = `session ${event.session_id}${resumed}`;
      node.port.onmessage = (chunk) => {
        if (ws && ws.readyState === WebSocket.OPEN) ws.send(chunk.data);
      };
      setStatus("Listening — speak now.");
    } else if (event.type === "transcript") {
      showTranscript(event);
    } else if (event.type === "interrupt") {
      flushPlayback();
    } else if (event.type === "handoff") {
      document.getElementById("agent").textContent = event.to_agent;
    } else if (event.type === "turn_latency") {
      const row = el("div", "latency", `answered in ${Math.round(event.voice_to_voice_ms)} ms`);
      transcript.append(row);
    } else if (event.type === "call_ended") {
      if (event.outcome !== "cancelled") resumable = null; // the bot ended it
      setStatus(`Conversation ended (${event.outcome}).`);
    }
  };
  ws.onclose = (e) => {
    if (e.code !== 1000) {
      const again = resumable ? " Press the button to resume." : "";
      setStatus(`Disconnected (${e.code}${e.reason ? ": " + e.reason : ""}).${again}`);
    }
    stop(false);
  };
  button.textContent = "Stop";
  button.classList.add("live");
}

function stop(sendStop = true) {
  if (ws && sendStop && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ type: "stop" }));
    resumable = null; // the person ended it: the next press starts a new conversation
  }
  ws = null;
  if (audio) {
    audio.stream.getTracks().forEach((track) => track.stop());
    audio.node.port.onmessage = null;
    setTimeout(((context) => () => context.close())(audio.context), 500);
    audio = null;
  }
  button.textContent = "Start talking";
  button.classList.remove("live");
}

button.onclick = () => {
  if (ws) { stop(); return; }
  start().catch((error) => { setStatus(`Could not start: ${error.message}`); stop(false); });
};
