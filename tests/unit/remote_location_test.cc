// From a location and the environment to a request (restore/io/remote_location.h): URL
// forms, endpoint and region precedence, credentials from the environment and from
// profiles, and what messages show of a location. The environment is a map: the process's
// own and the caller's ~/.aws are never read.
#include "restore/io/remote_location.h"

#include <sys/stat.h>

#include <map>

#include "tests/testutil/test_util.h"

namespace stasis {
namespace {

using ::testing::HasSubstr;
using namespace ::stasis::testing;

RemoteEnvironment Env(std::map<std::string, std::string> vars) {
  RemoteEnvironment env;
  env.getenv = [vars = std::move(vars)](const char* name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
  return env;
}

TEST(RemoteLocationTest, KnowsItsSchemes) {
  EXPECT_TRUE(IsRemoteLocation("s3://b/k"));
  EXPECT_TRUE(IsRemoteLocation("HTTPS://h/p"));
  EXPECT_TRUE(IsRemoteLocation("http://h/p"));
  EXPECT_FALSE(IsRemoteLocation("/tmp/x.stasis"));
  EXPECT_FALSE(IsRemoteLocation("s3:/b/k"));
  EXPECT_FALSE(IsRemoteLocation("file:///x"));
}

TEST(RemoteLocationTest, RedactionDropsQueriesAndUserInfo) {
  EXPECT_EQ(RedactLocation("https://h/p?X-Amz-Signature=abc&X-Amz-Credential=k"), "https://h/p");
  EXPECT_EQ(RedactLocation("http://user:pw@h:8/p#frag"), "http://h:8/p");
  EXPECT_EQ(RedactLocation("s3://b/k"), "s3://b/k");
}

TEST(RemoteLocationTest, AwsEndpointIsVirtualHostedAndCustomOnesPathStyle) {
  TempDir home;
  auto env = Env({{"HOME", home.path()}, {"AWS_REGION", "eu-west-1"}});
  auto aws = ResolveLocation("s3://bucket/dir/model v1+.stasis", {}, env);
  ASSERT_THAT(aws.status(), IsOk());
  EXPECT_EQ(aws->url, "https://bucket.s3.eu-west-1.amazonaws.com/dir/model%20v1%2B.stasis");
  EXPECT_EQ(aws->region, "eu-west-1");
  EXPECT_FALSE(aws->credentials.has_value());
  EXPECT_EQ(aws->credentials_source, "none");
  // Dots in a bucket break the wildcard certificate: path-style on AWS too.
  auto dotted = ResolveLocation("s3://my.bucket/k", {}, env);
  ASSERT_THAT(dotted.status(), IsOk());
  EXPECT_EQ(dotted->url, "https://s3.eu-west-1.amazonaws.com/my.bucket/k");

  RemoteOptions o;
  o.s3_endpoint = "http://127.0.0.1:9000/";
  auto custom = ResolveLocation("s3://bucket/k", o, env);
  ASSERT_THAT(custom.status(), IsOk());
  EXPECT_EQ(custom->url, "http://127.0.0.1:9000/bucket/k");
}

TEST(RemoteLocationTest, EndpointPrecedence) {
  TempDir home;
  const std::map<std::string, std::string> base = {{"HOME", home.path()},
                                                   {"AWS_ENDPOINT_URL", "http://general:1"},
                                                   {"AWS_ENDPOINT_URL_S3", "http://s3only:2"}};
  auto from_env = ResolveLocation("s3://b/k", {}, Env(base));
  ASSERT_THAT(from_env.status(), IsOk());
  EXPECT_EQ(from_env->url, "http://s3only:2/b/k");
  auto general = base;
  general.erase("AWS_ENDPOINT_URL_S3");
  EXPECT_EQ(ResolveLocation("s3://b/k", {}, Env(general))->url, "http://general:1/b/k");
  RemoteOptions o;
  o.s3_endpoint = "https://flag:3";
  EXPECT_EQ(ResolveLocation("s3://b/k", o, Env(base))->url, "https://flag:3/b/k");
  o.s3_endpoint = "ftp://x";
  EXPECT_THAT(ResolveLocation("s3://b/k", o, Env(base)).status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("http:// or https://")));
}

TEST(RemoteLocationTest, RejectsLocationsWithoutBucketOrKey) {
  auto env = Env({});
  for (const char* bad : {"s3://", "s3://bucket", "s3://bucket/", "s3:///key", "https://"})
    EXPECT_THAT(ResolveLocation(bad, {}, env).status(),
                StatusIs(StatusCode::kInvalidArgument, HasSubstr("")))
        << bad;
}

TEST(RemoteLocationTest, CredentialsFromTheEnvironmentComeFirst) {
  TempDir home;
  WriteFile(home.File("creds"),
            "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = f\n");
  auto env = Env({{"HOME", home.path()},
                  {"AWS_SHARED_CREDENTIALS_FILE", home.File("creds")},
                  {"AWS_ACCESS_KEY_ID", "ENVKEY"},
                  {"AWS_SECRET_ACCESS_KEY", "envsecret"},
                  {"AWS_SESSION_TOKEN", "tok"}});
  auto loc = ResolveLocation("s3://b/k", {}, env);
  ASSERT_THAT(loc.status(), IsOk());
  ASSERT_TRUE(loc->credentials.has_value());
  EXPECT_EQ(loc->credentials->access_key_id, "ENVKEY");
  EXPECT_EQ(loc->credentials->session_token, "tok");
  EXPECT_EQ(loc->credentials_source, "environment");
  // One of the pair alone is a mistake, not "no credentials".
  auto half = Env({{"HOME", home.path()}, {"AWS_ACCESS_KEY_ID", "ENVKEY"}});
  EXPECT_THAT(ResolveLocation("s3://b/k", {}, half).status(),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("together")));
}

TEST(RemoteLocationTest, ProfilesAndTheirRegion) {
  TempDir home;
  ASSERT_EQ(::mkdir(home.File(".aws").c_str(), 0700), 0);
  WriteFile(home.File(".aws/credentials"),
            "# comment\n[default]\naws_access_key_id=DEF\naws_secret_access_key=d\n"
            "[prod]\n  aws_access_key_id = PROD \naws_secret_access_key = p\n"
            "aws_session_token = t\n");
  WriteFile(home.File(".aws/config"),
            "[default]\nregion = us-west-2\n[profile prod]\nregion = ap-south-1\n");
  auto def = ResolveLocation("s3://b/k", {}, Env({{"HOME", home.path()}}));
  ASSERT_THAT(def.status(), IsOk());
  EXPECT_EQ(def->credentials->access_key_id, "DEF");
  EXPECT_EQ(def->region, "us-west-2");
  EXPECT_EQ(def->credentials_source, "profile 'default'");
  auto prod =
      ResolveLocation("s3://b/k", {}, Env({{"HOME", home.path()}, {"AWS_PROFILE", "prod"}}));
  ASSERT_THAT(prod.status(), IsOk());
  EXPECT_EQ(prod->credentials->access_key_id, "PROD");
  EXPECT_EQ(prod->credentials->session_token, "t");
  EXPECT_EQ(prod->region, "ap-south-1");
  // AWS_REGION wins over the profile's region.
  auto env_region = ResolveLocation(
      "s3://b/k", {}, Env({{"HOME", home.path()}, {"AWS_PROFILE", "prod"}, {"AWS_REGION", "x-1"}}));
  EXPECT_EQ(env_region->region, "x-1");
  EXPECT_THAT(ResolveLocation("s3://b/k", {}, Env({{"HOME", home.path()}, {"AWS_PROFILE", "nope"}}))
                  .status(),
              StatusIs(StatusCode::kNotFound, HasSubstr("'nope'")));
}

TEST(RemoteLocationTest, HttpUrlsAreTakenAsGiven) {
  auto loc = ResolveLocation("https://h:8443/a/b.stasis?X-Amz-Signature=s&x=1", {}, Env({}));
  ASSERT_THAT(loc.status(), IsOk());
  EXPECT_FALSE(loc->s3);
  EXPECT_EQ(loc->url, "https://h:8443/a/b.stasis?X-Amz-Signature=s&x=1");
  EXPECT_EQ(loc->display, "https://h:8443/a/b.stasis");
}

TEST(RemoteLocationTest, EncodesKeysAsS3Wants) {
  EXPECT_EQ(EncodeS3Key("a/b c/ä~_.-"), "a/b%20c/%C3%A4~_.-");
  EXPECT_EQ(EncodeS3Key("x+y=z&?#"), "x%2By%3Dz%26%3F%23");
}

}  // namespace
}  // namespace stasis
