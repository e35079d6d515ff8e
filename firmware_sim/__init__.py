"""The simulated world below the agent's drivers, the fleet simulator and the demo.

It may import every other package: it is the test world. Nothing in the agent reaches it
except through a backend named in configuration (``--simulate``).
"""
