"""Scheduling: who may run now (admission) and on what (the bounded executor)."""
