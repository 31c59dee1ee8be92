"""Model fleets for demos, tests and benchmarks: synthetic models and tenant text classifiers."""
