"""voicebot: real-time voice agents for ACS phone calls, built on pipecat."""
