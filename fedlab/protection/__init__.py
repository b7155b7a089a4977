"""What protects the clients' data: DP accounting, the SecAgg protocol and CKKS homomorphic encryption."""
