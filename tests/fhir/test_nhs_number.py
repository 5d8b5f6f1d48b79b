from hypothesis import given
from hypothesis import strategies as st

from joinedup.fhir.nhs_number import check_digit, is_valid


def test_known_valid_and_invalid_numbers():
    assert is_valid("9434765919")
    assert is_valid("943 476 5919")
    assert not is_valid("9434765918")
    assert not is_valid("94347659")
    assert not is_valid("943476591X")
    assert not is_valid("")


@given(st.text(alphabet="0123456789", min_size=9, max_size=9))
def test_generated_numbers_pass_and_any_single_digit_change_fails(first_nine):
    check = check_digit(first_nine)
    if check is None:  # remainder gives 10: no valid number with these nine digits
        assert not any(is_valid(first_nine + str(d)) for d in range(10))
        return
    number = first_nine + str(check)
    assert is_valid(number)
    for pos in range(10):
        for d in "0123456789":
            if d != number[pos]:
                assert not is_valid(number[:pos] + d + number[pos + 1:])
