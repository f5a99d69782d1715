// AudioWorklet: the microphone as PCM16 mono at the rate the page announced, in 20 ms chunks.
// processorOptions.targetRate: the announced rate; the context runs at sampleRate (a global here).
"use strict";

class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.targetRate = options.processorOptions.targetRate;
    this.step = sampleRate / this.targetRate; // input samples per output sample
    this.position = 0; // fractional read position into the pending input
    this.pending = new Float32Array(0);
    this.chunk = new Int16Array(this.targetRate / 50); // 20 ms
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    const joined = new Float32Array(this.pending.length + channel.length);
    joined.set(this.pending);
    joined.set(channel, this.pending.length);
    let pos = this.position;
    while (pos + 1 < joined.length) { // linear interpolation (a no-op when the rates match)
      const i = Math.floor(pos);
      const frac = pos - i;
      const value = joined[i] * (1 - frac) + joined[i + 1] * frac;
      const clipped = Math.max(-1, Math.min(1, value));
      this.chunk[this.filled++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
      if (this.filled === this.chunk.length) {
        this.port.postMessage(this.chunk.buffer.slice(0));
        this.filled = 0;
      }
      pos += this.step;
    }
    const keep = Math.floor(pos);
    this.pending = joined.slice(keep);
    this.position = pos - keep;
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
