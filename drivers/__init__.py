"""Sensor sources (thin IO adapters) and the pure decoders behind them."""
