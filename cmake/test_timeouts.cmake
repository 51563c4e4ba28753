# Instrumented builds (make test-asan) run the same tests several times slower: every TIMEOUT
# property a directory sets is multiplied by SHARDTUNE_TEST_TIMEOUT_SCALE when its CMakeLists.txt
# ends with shardtune_scale_timeouts(). (ctest --timeout reaches only tests without the property.)
set(SHARDTUNE_TEST_TIMEOUT_SCALE 1 CACHE STRING "Multiplier of every test's TIMEOUT (test-asan.sh raises it)")
function(shardtune_scale_timeouts)
  if(SHARDTUNE_TEST_TIMEOUT_SCALE EQUAL 1)
    return()
  endif()
  get_property(tests DIRECTORY PROPERTY TESTS)
  foreach(test IN LISTS tests)
    get_test_property(${test} TIMEOUT timeout)
    if(timeout)
      math(EXPR timeout "${timeout} * ${SHARDTUNE_TEST_TIMEOUT_SCALE}")
      set_tests_properties(${test} PROPERTIES TIMEOUT ${timeout})
    endif()
    # The scripts' own waits (tests/e2e/checks.sh's wait_status) scale with it.
    set_property(TEST ${test} APPEND PROPERTY ENVIRONMENT "SHARDTUNE_TEST_TIMEOUT_SCALE=${SHARDTUNE_TEST_TIMEOUT_SCALE}")
  endforeach()
endfunction()
