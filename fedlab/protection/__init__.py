"""What protects the clients' data: DP accounting, distributed DP's noise shares, the SecAgg protocol and CKKS
homomorphic encryption."""
