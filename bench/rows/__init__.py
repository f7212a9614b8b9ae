"""The bench's row families, one module each, by row number. A new family is a module with a
`measure(device, args) -> list[Row]` function, registered here."""

from bench.rows import convergence, epoch, jacobian, memory, startup, test_suite

FAMILIES = {
    1: startup,
    2: jacobian,
    3: epoch,
    4: convergence,
    5: memory,
    6: test_suite,
}
