"""Consistency-model math: noise schedules, DDIM solver, boundary conditions, losses, samplers."""
