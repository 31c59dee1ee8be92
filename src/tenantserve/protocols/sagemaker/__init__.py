"""SageMaker runtime invocations and the multi-model container API: routes and codec."""
