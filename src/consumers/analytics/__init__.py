"""Real-time per-tenant analytics: tumbling-window event counts on faust-streaming."""
