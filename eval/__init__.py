"""Probing benchmarks and reports; works on any exported student or any teacher."""
