# The version every executable prints with --version (common/version.h) and the .deb carries:
# CMakeLists.txt's project version, plus "+git.HASH" (".dirty" for uncommitted changes) in a git
# checkout whose HEAD no `vX.Y.Z` tag names; `git describe` of the tag when one does. Fixed at
# configure time: reconfigure (or `make clean`) after a commit to change it.
set(SHARDTUNE_VERSION_STRING ${PROJECT_VERSION})
find_package(Git QUIET)
if(GIT_FOUND AND EXISTS ${PROJECT_SOURCE_DIR}/.git)
  execute_process(COMMAND ${GIT_EXECUTABLE} describe --tags --match "v[0-9]*" --exact-match --dirty=.dirty
                  WORKING_DIRECTORY ${PROJECT_SOURCE_DIR} OUTPUT_VARIABLE tag RESULT_VARIABLE tag_result
                  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  execute_process(COMMAND ${GIT_EXECUTABLE} describe --always --abbrev=9 --dirty=.dirty
                  WORKING_DIRECTORY ${PROJECT_SOURCE_DIR} OUTPUT_VARIABLE hash RESULT_VARIABLE hash_result
                  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(tag_result EQUAL 0)
    string(REGEX REPLACE "^v" "" SHARDTUNE_VERSION_STRING "${tag}")
  elseif(hash_result EQUAL 0)
    set(SHARDTUNE_VERSION_STRING "${PROJECT_VERSION}+git.${hash}")
  endif()
endif()

set(SHARDTUNE_TORCH_VERSION ${Torch_VERSION})
if(NOT SHARDTUNE_TORCH_VERSION)
  set(SHARDTUNE_TORCH_VERSION unknown)
endif()
foreach(component CUDA NCCL)
  if(NOT SHARDTUNE_${component}_VERSION)
    set(SHARDTUNE_${component}_VERSION none)
  endif()
endforeach()
message(STATUS "shardtune ${SHARDTUNE_VERSION_STRING}: LibTorch ${SHARDTUNE_TORCH_VERSION}, "
               "CUDA ${SHARDTUNE_CUDA_VERSION}, NCCL ${SHARDTUNE_NCCL_VERSION}")

configure_file(${PROJECT_SOURCE_DIR}/common/build_info.h.in ${PROJECT_BINARY_DIR}/generated/build_info.h @ONLY)
add_library(shardtune_version STATIC ${PROJECT_SOURCE_DIR}/common/version.cc)
target_include_directories(shardtune_version PUBLIC ${PROJECT_SOURCE_DIR} PRIVATE ${PROJECT_BINARY_DIR}/generated)
target_link_libraries(shardtune_version PRIVATE fmt::fmt)
